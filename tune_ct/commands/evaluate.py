"""Evaluate a trained model once on the locked test split (never used for tuning), or on an external set.

    python -m tune_ct.evaluate --model MODEL_URI [--data DIR] [--sources CSV] [--json FILE] [--log-run RUN_ID]
    python -m tune_ct.evaluate --model MODEL_URI --external DIR [--name NAME] [--labels CSV] [--json FILE]

MODEL_URI is `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN/model` or a trial checkpoint folder.
Reports accuracy, balanced accuracy, macro-F1 (with 95% bootstrap CIs), per-class precision / recall /
specificity / F1, one-vs-rest ROC-AUC, expected calibration error with a reliability diagram, the confusion
matrix (counts and row-normalised) and, where origins are known, the same broken down by origin.

--external scores every readable film of another hospital's folder (`<class>/images/*`, `<class>/*.png`, or any
folder with a labels CSV `file,label[,origin]`), with any subset of the classes: the figures cover the classes
present, and the films called an absent class are counted. For a registered version (models:/NAME/VERSION or
@ALIAS) the evaluation is logged as a run in the MLflow experiment `tune_ct-evaluations` and on the version's
tags `tune_ct.external.<name>.*`, which the promotion gate `min_external_macro_f1` reads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tune_ct.commands.common import (add_data_args, add_tracking_arg, console_logging, data_settings, exit_on,
                                     usage_error, write_json)
from tune_ct.data.external_set import load_external
from tune_ct.data.files import DataError
from tune_ct.data.prepare import DataSettings, as_recorded
from tune_ct.evaluate.evaluation import evaluate_on, locked_test_set
from tune_ct.evaluate.external_score import format_external, score_external
from tune_ct.evaluate.full_report import format_report, full_report, log_report
from tune_ct.registry.external_record import log_external_evaluation, refuse_selection_set, registered_version
from tune_ct.registry.models import ModelLoadError, load_model
from tune_ct.track.tags import EVALUATIONS_EXPERIMENT, external_figure
from tune_ct.track.uri import connect, resolve_tracking_uri, ui_links


@dataclass(frozen=True)
class ExternalOptions:
    folder: Path
    name: str | None = None  # default: the folder's name
    labels: Path | None = None


@dataclass(frozen=True)
class EvaluateOptions:
    model: str
    tracking_uri: str
    data: DataSettings  # data None: the folder the model was trained on
    bootstrap: int = 1000
    log_run: str | None = None
    json: Path | None = None
    external: ExternalOptions | None = None  # set: score this external set instead of the locked test split


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a checkpoint folder")
    add_data_args(p, data_help="dataset folder (default: the one the model was trained on, else $TUNE_CT_DATA)",
                  limit_help="evaluate on the locked test images of an N-per-class sample")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    add_tracking_arg(p)
    p.add_argument("--log-run", help="also log the metrics, JSON and pictures to this MLflow run id")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--external", type=Path, help="score the films of another hospital's folder instead of the "
                   "locked test split: <class>/images/*, <class>/*.png|jpg|dcm, or any folder with --labels")
    p.add_argument("--name", help="name of the external set in MLflow tags and gates (default: its folder's name)")
    p.add_argument("--labels", type=Path, help="CSV file,label[,origin] of the external films (paths relative to "
                   "--external or absolute)")
    return p.parse_args(argv)


def external_options(args) -> ExternalOptions | None:
    """--external's options; the flags that only mean something for one of the two modes are refused."""
    if args.external is None:
        if args.name or args.labels:
            usage_error("--name and --labels describe an external set: pass --external DIR too")
        return None
    clash = [flag for flag, value in (("--data", args.data), ("--sources", args.sources),
                                      ("--limit-per-class", args.limit_per_class)) if value is not None]
    if clash:
        usage_error(f"{', '.join(clash)} select the locked test split and cannot be combined with "
                    "--external (origins of external films go in the --labels CSV's origin column)")
    return ExternalOptions(folder=args.external, name=args.name, labels=args.labels)


def evaluate(options: EvaluateOptions) -> int:
    if options.external:
        return evaluate_external(options)
    model, loaded = load_model(options.model, options.tracking_uri)
    test = locked_test_set(as_recorded(options.data, loaded.data, loaded.metadata.get("data_spec")))
    report = full_report(evaluate_on(model, loaded.checkpoint, test), options.bootstrap, options.data.seed)
    report.update({"model": options.model, "manifest_hash": test.manifest.hash, "data": str(test.root)})
    print(format_report(report, f"{options.model} ({loaded.checkpoint.title})"))
    return write_outputs(options, report)


def write_outputs(options: EvaluateOptions, report: dict) -> int:
    if options.json:
        write_json(options.json, report)
    if options.log_run:
        client = connect(options.tracking_uri)
        log_report(client, options.log_run, report, options.model)
        run = client.get_run(options.log_run)
        print("MLflow " + "; ".join(ui_links(options.tracking_uri, run.info.experiment_id, options.log_run)))
    return 0


def evaluate_external(options: EvaluateOptions) -> int:
    """Score the external set; for a registered version, refuse the set it was selected on, log a run, tag it."""
    ext = load_external(options.external.folder, options.external.labels, options.external.name)
    client = connect(options.tracking_uri) if options.model.startswith("models:/") else None
    version = registered_version(client, options.model) if client else None
    if version is not None:
        refuse_selection_set(client, version, ext.content_hash, ext.name)
    # The resolved version, not the alias again: the alias may move while the films are scored.
    model, loaded = load_model(f"models:/{version.name}/{version.version}" if version else options.model,
                               options.tracking_uri)
    report = score_external(model, loaded.checkpoint, ext, options.data.work, options.bootstrap, options.data.seed)
    report["model"] = options.model
    print(format_external(report, f"{options.model} ({loaded.checkpoint.title})"))
    write_outputs(options, report)
    if version is not None:
        run_id = log_external_evaluation(client, options.tracking_uri, version, report)
        print(f"\nlogged as run {run_id} in MLflow experiment {EVALUATIONS_EXPERIMENT}; {version.name} "
              f"v{version.version} tagged {external_figure(ext.name, 'macro_f1')}={report['macro_f1']:.4f}")
        experiment_id = client.get_run(run_id).info.experiment_id
        print("MLflow " + "; ".join(ui_links(options.tracking_uri, experiment_id, run_id)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = EvaluateOptions(model=args.model, tracking_uri=resolve_tracking_uri(args.tracking_uri),
                              data=data_settings(args), bootstrap=args.bootstrap, log_run=args.log_run,
                              json=args.json, external=external_options(args))
    console_logging()
    return exit_on((ModelLoadError, DataError), lambda: evaluate(options))


if __name__ == "__main__":
    sys.exit(main())
