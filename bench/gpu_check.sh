#!/usr/bin/env bash
# The GPU check, one script for one short lease of a GPU machine that has PyTorch but no package index and no data.
#   python bench/gpu_carry.py ... --out gpu_carry     # here: data subset + packages (see that file)
#   bash bench/gpu_check.sh                           # there, from the repository root; results in $OUT
# 1. bench/throughput.py on CUDA: resnet18 and baseline_cnn at 224 px, the trial's step vs a bare loop, both in
#    mixed precision, GPU utilisation sampled through NVML; bf16 vs fp32 for resnet18@224.
# 2. a real search (search_spaces/gpu_smoke.yaml: 8 resnet18@224 trials, 4 sharing the GPU) with local Ray and
#    MLflow on SQLite, then per-trial wall / in-loop / start-up seconds and images/s (bench/overhead.py's reader).
# nvidia-smi samples utilisation every 500 ms for the whole run; phases.txt holds each phase's start time.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
REPO=$PWD
W=/tmp/gpu_check && rm -rf $W && mkdir -p $W
phase() { echo "$(date -u +%Y/%m/%d\ %H:%M:%S) $1" | tee -a "$OUT/phases.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/phases.txt"
nproc | sed 's/^/cpus /' | tee -a "$OUT/phases.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv,noheader -lms 500 > "$OUT/smi.csv" &
SMI=$!
phase unpack
mkdir -p $W/site && tar -C $W/site -I 'xz -T0 -d' -xf gpu_carry/site.tar.xz || exit 1
export PYTHONPATH=$W/site:$REPO
python3 -c "import torch, ray, mlflow, optuna, timm, pytorch_grad_cam; print('torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__, 'optuna', optuna.__version__, 'timm', timm.__version__)" | tee -a "$OUT/phases.txt"
DATA=$REPO/gpu_carry/data/COVID-19_Radiography_Dataset
# The stage layout (tune_ct/{data,model,train,track,evaluate,registry,search,commands}) travels with the working
# tree, not in gpu_carry/: stop here, before any GPU time is spent, if a module the phases below import is missing.
if ! python3 -c "import tune_ct.train.trial, tune_ct.train.loop, tune_ct.commands.search, tune_ct.search.pipeline, tune_ct.track.tracker, tune_ct.track.tags; print('tune_ct imports: ok')" >> "$OUT/phases.txt" 2>&1; then
  echo "tune_ct imports failed (see $OUT/phases.txt)"; kill $SMI; exit 1
fi
python3 -c "import ray.dashboard.optional_deps; print('ray dashboard deps: ok')" 2>&1 | tail -1 | tee -a "$OUT/phases.txt"
if [ -z "${SKIP_THROUGHPUT:-}" ]; then  # SKIP_THROUGHPUT=1: only the search (a rerun)
phase throughput
python3 bench/throughput.py --device cuda --data "$DATA" --workdir $W/tp --limit-per-class 240 \
  --models resnet18 baseline_cnn --sizes 224 --batch-size 64 --steps 30 --rounds 3 --threads 4 \
  --bf16-check resnet18:224 --json "$OUT/throughput_gpu.json" > "$OUT/throughput.log" 2>&1
echo "throughput exit $?" | tee -a "$OUT/phases.txt"
fi
phase search
(cd $W && python3 -m tune_ct.search --space "$REPO/search_spaces/gpu_smoke.yaml" --data "$DATA" \
  --sources "$REPO/gpu_carry/data/sources.csv" --workdir $W/wd --storage $W/ray_results --name gpu \
  --tracking-uri sqlite:///$W/mlflow.db --experiment gpu_check --summary $W/summary-gpu.json ${SEARCH_ARGS:-}) \
  > "$OUT/search.log" 2>&1
echo "search exit $?" | tee -a "$OUT/phases.txt"
phase trials
cp $W/summary-gpu.json "$OUT/search_summary.json" 2>/dev/null
python3 - <<PY > "$OUT/trials.json" 2>>"$OUT/search.log"
import json, sys
sys.path.insert(0, "$REPO/bench")
from pathlib import Path
from overhead import trial_rows
print(json.dumps(trial_rows(Path("$W"), "gpu"), indent=1))
PY
phase done
kill $SMI
