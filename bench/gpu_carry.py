"""Build the folder a GPU check carries to a machine that has no package index and no copy of the data.

    python bench/gpu_carry.py --data ../shared/data/COVID-19_Radiography_Dataset --sources ../shared/data/sources.csv \
        --per-class 240 --out gpu_carry

writes (the folder is git-ignored; bench/gpu_check.sh reads it):
  gpu_carry/data/COVID-19_Radiography_Dataset/<class>/images/*.png   N real films per class, chosen with a seed
  gpu_carry/data/sources.csv                                          their origins, for the origin-stratified split
  gpu_carry/site.tar.xz     the Python packages tune_ct needs that the GPU image lacks (Ray, MLflow, Optuna,
                            pytorch-grad-cam, ...), as CPython 3.12 manylinux wheels unpacked and trimmed: no Java
                            jars, no dashboard or MLflow web UI assets (the dashboard's API stays: Ray Train needs
                            it), RLlib/Serve/LLM removed, binaries stripped.
The whole folder must stay under the transfer limit (64 MiB with the repository), so it prints its size.
tune_ct itself (every stage subpackage, tune_ct/registry/gates.yaml) is not packed here: it travels as the working
tree, and bench/gpu_check.sh puts the repository root on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
# Already in the GPU image (KINDS.md's package list): torch, torchvision, timm, numpy, scipy, pandas, pyarrow,
# scikit-learn, matplotlib, opencv, pillow, pyyaml, requests, ... Only what is missing there travels.
PACKAGES = """ray==2.60.0 alembic==1.20.1 annotated-types==0.8.0 blinker==1.9.0 cachetools==7.3.3 cffi==2.1.1
colorlog==6.12.0 cryptography==50.0.2 databricks-sdk==0.162.0 docker==7.2.0 fastapi==0.165.0 flask==3.1.3
flask-cors==6.0.5 gitdb==4.0.12 gitpython==3.2.1 google-auth==2.63.0 graphene==3.4.3 graphql-core==3.2.14
graphql-relay==3.2.0 gunicorn==26.2.0 huey==3.5.4 importlib-metadata==9.1.0 itsdangerous==2.2.0
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 mako==1.4.3 mlflow==3.17.2 mlflow-skinny==3.17.2
mlflow-tracing==3.17.2 opentelemetry-api==1.45.2 opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2 optuna==5.0.0 prettytable==3.18.0 pyasn1==0.6.5 pyasn1-modules==0.4.2
pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5 python-dotenv==1.2.4 referencing==0.37.0
rpds-py==2026.9.1 skops==0.16.0 smmap==5.0.3 sqlalchemy==2.1.9 sqlparse==0.6.1 starlette==1.10.0
tensorboardx==2.6.5 typing-inspection==0.4.5 uvicorn==0.54.0 wcwidth==0.9.4 imagehash==4.3.2
pywavelets==1.9.0 pydicom==3.0.2
aiohttp-cors==0.8.1 colorful==0.5.8 google-api-core==2.44.0 googleapis-common-protos==1.76.0 opencensus==0.11.4
opencensus-context==0.1.3 opentelemetry-exporter-prometheus==0.66b2 proto-plus==1.29.0 smart-open==9.0.2""".split()
# The last line is ray[default]'s dashboard: without it Ray Train cannot free stopped trials' GPUs (tune_ct.search
# refuses such a cluster). py-spy and virtualenv (profiling, pip runtime environments) are left out.
SDIST_ONLY = ["grad-cam==1.5.7", "ttach==0.0.3"]  # no wheels on PyPI: built here (pure Python)
PLATFORMS = ["manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
TRIM = ["ray/jars", "ray/dashboard/client/build/static", "ray/dashboard/client/build/speedscope-1.5.3", "ray/rllib", "ray/serve", "ray/llm", "mlflow/server/js/build",
        "pydicom/data/test_files", "pywt/data"]


def copy_subset(data: Path, sources: Path, per_class: int, seed: int, out: Path) -> int:
    rows = {r["file"]: r for r in csv.DictReader(sources.open())}
    picked = []
    for cls in CLASSES:
        files = sorted((data / cls / "images").glob("*.png"))
        if len(files) < per_class:
            sys.exit(f"{data / cls / 'images'}: {len(files)} images, fewer than --per-class {per_class}")
        picked += random.Random(f"{seed}-{cls}").sample(files, per_class)
    target = out / "data" / data.name
    for f in picked:
        dest = target / f.relative_to(data)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    with (out / "data" / "sources.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=next(iter(rows.values())).keys())
        writer.writeheader()
        for f in picked:
            writer.writerow(rows[str(f.relative_to(data))])
    return len(picked)


def build_site(out: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
        subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", *platform_args, "-d", str(wheels), *PACKAGES], check=True)
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), *SDIST_ONLY], check=True)
        for wheel in sorted(wheels.glob("*.whl")):  # unzip keeps the executable bits Ray's programs need
            subprocess.run(["unzip", "-q", "-o", str(wheel), "-d", str(site)], check=True)
        for rel in TRIM:
            shutil.rmtree(site / rel, ignore_errors=True)
        # The dashboard refuses to start without its build folder; its state API (what Ray Train needs) works
        # with an empty one, only the web UI is blank.
        (site / "ray/dashboard/client/build/static").mkdir(parents=True, exist_ok=True)
        for junk in [*site.rglob("*.map"), *site.rglob("tests")]:
            shutil.rmtree(junk, ignore_errors=True) if junk.is_dir() else junk.unlink()
        for binary in site.rglob("*"):  # Ray's binaries ship with symbols: ~60 MB of the ~200
            if binary.is_file() and not binary.is_symlink() and binary.open("rb").read(4) == b"\x7fELF":
                subprocess.run(["strip", "--strip-unneeded", str(binary)], check=False, capture_output=True)
        subprocess.run(f"tar -C {site} -cf - . | xz -T0 -6 > {out / 'site.tar.xz'}", shell=True, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--sources", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("gpu_carry"))
    p.add_argument("--skip-site", action="store_true", help="only the data subset")
    args = p.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    n = copy_subset(args.data.resolve(), args.sources, args.per_class, args.seed, args.out)
    if not args.skip_site:
        build_site(args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {n} images, {size / 2**20:.1f} MiB in all (the transfer limit is 64 MiB with the repo)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
