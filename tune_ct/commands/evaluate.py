"""Evaluate a trained model once on the locked test split (never used for tuning).

    python -m tune_ct.evaluate --model MODEL_URI [--data DIR] [--sources CSV] [--json FILE] [--log-run RUN_ID]

MODEL_URI is `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN/model` or a trial checkpoint folder.
Reports accuracy, balanced accuracy, macro-F1 (with 95% bootstrap CIs), per-class precision / recall /
specificity / F1, one-vs-rest ROC-AUC, expected calibration error with a reliability diagram, the confusion
matrix (counts and row-normalised) and, where origins are known, the same broken down by origin.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from tune_ct.commands.common import add_data_args, add_tracking_arg, console_logging, data_settings, exit_on, write_json
from tune_ct.data.files import DataError
from tune_ct.data.prepare import DataSettings
from tune_ct.evaluate.evaluation import evaluate_on, locked_test_set
from tune_ct.evaluate.full_report import format_report, full_report, log_report
from tune_ct.registry.models import ModelLoadError, load_model
from tune_ct.track.uri import connect, resolve_tracking_uri


@dataclass(frozen=True)
class EvaluateOptions:
    model: str
    tracking_uri: str
    data: DataSettings  # data None: the folder the model was trained on
    bootstrap: int = 1000
    log_run: str | None = None
    json: Path | None = None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a checkpoint folder")
    add_data_args(p, data_help="dataset folder (default: the one the model was trained on, else $TUNE_CT_DATA)",
                  limit_help="evaluate on the locked test images of an N-per-class sample")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    add_tracking_arg(p)
    p.add_argument("--log-run", help="also log the metrics, JSON and pictures to this MLflow run id")
    p.add_argument("--json", type=Path, help="write the full report here")
    return p.parse_args(argv)


def evaluate(options: EvaluateOptions) -> int:
    model, meta = load_model(options.model, options.tracking_uri)
    test = locked_test_set(dataclasses.replace(options.data, data=options.data.data or meta.get("data")))
    report = full_report(evaluate_on(model, meta, test), options.bootstrap, options.data.seed)
    report.update({"model": options.model, "manifest_hash": test.manifest.hash, "data": str(test.root)})
    print(format_report(report, f"{options.model} ({meta.get('backbone')}, {meta.get('image_size')}px)"))
    if options.json:
        write_json(options.json, report)
    if options.log_run:
        log_report(connect(options.tracking_uri), options.log_run, report, options.model)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = EvaluateOptions(model=args.model, tracking_uri=resolve_tracking_uri(args.tracking_uri),
                              data=data_settings(args), bootstrap=args.bootstrap, log_run=args.log_run,
                              json=args.json)
    console_logging()
    return exit_on((ModelLoadError, DataError), lambda: evaluate(options))


if __name__ == "__main__":
    sys.exit(main())
