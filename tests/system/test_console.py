"""What a search prints: a compact trial table and the final summary by default, Tune's and Ray's own output only
with --verbose; progress bars for the data stage on stderr when asked for (or when stderr is a terminal)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path


from tune_ct.data import manifest as mf
from tune_ct.data.cache import open_or_build
from tune_ct.data.subsets import write_split_subset
from tune_ct.track.trial_table import COLUMNS, format_row, stop_reason

from helpers.search_cli import REPO
TINY = REPO / "tests/spaces/tiny.yaml"
MAX_LINES_3_TRIALS = 110  # measured: ~95 lines (3 trials: ~12 table rows; the final summary ~75 lines)


def test_stop_reason_and_row_layout():
    assert stop_reason(2, 2, out_of_time=False) == "no"
    assert stop_reason(1, 2, out_of_time=False) == "asha"
    assert stop_reason(1, 2, out_of_time=True) == "time_budget"
    header = format_row(COLUMNS)
    row = format_row(("1eb31d35", "baseline_cnn", "32", "3.54e-03", "1/2", "0.575", "RUNNING"))
    # Columns line up: every cell starts where its header does.
    for name, cell in zip(("backbone", "px", "lr", "epoch", "best", "state"),
                          ("baseline_cnn", "32", "3.54e-03", "1/2", "0.575", "RUNNING")):
        assert header.index(name) == row.index(cell), (name, header, row)


def test_progress_bars_on_stderr_when_asked(small_dataset, tmp_path, monkeypatch):
    """Hashing films and building a cache draw tqdm bars on stderr when a command asks for them, and nothing
    when stderr is not a terminal and nobody asked (the default)."""
    def build(workdir: Path) -> str:
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        manifest, _ = mf.build(small_dataset, workdir / "m.json", mf.BuildOptions())
        subset, _ = write_split_subset(manifest, small_dataset, workdir, None, 0, ("train", "val"), "trainval")
        open_or_build(subset, 32, workdir / "cache")
        monkeypatch.undo()
        return stderr.getvalue()

    try:
        mf.show_progress(True)
        shown = build(tmp_path / "asked")
        mf.show_progress(None)
        quiet = build(tmp_path / "default")
    finally:
        mf.show_progress(None)
    assert "hashing films" in shown and "caching films at 32px" in shown and "film/s" in shown
    assert "hashing films" not in quiet and "caching films" not in quiet


def run_search(tmp_path: Path, data: Path, *extra: str) -> tuple[str, dict]:
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_AIR_NEW_OUTPUT")}
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", str(TINY), "--limit-per-class",
         "16", "--num-samples", "3", "--summary", str(summary), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out, json.loads(summary.read_text())


def assert_compact_console(out: str, summary: dict, client) -> None:
    """What a 3-trial search prints by default (checked on the study test's search, tests/test_optuna_storage.py,
    which runs exactly that search: one search less in CI)."""
    lines = out.splitlines()
    assert len(lines) <= MAX_LINES_3_TRIALS, f"{len(lines)} lines:\n{out}"
    # The table: a header, and rows naming each trial by the id the MLflow runs are tagged with.
    assert any(re.match(r"trial\s+backbone\s+px\s+lr\s+epoch\s+best\s+state", line) for line in lines), out
    trial_ids = [client.get_run(r).data.tags["tune_ct.trial_id"] for r in summary["child_run_ids"]]
    assert len(trial_ids) == 3
    for trial_id in trial_ids:
        rows = [line for line in lines if line.startswith(trial_id)]
        assert rows and re.search(r"(DONE|STOPPED \(asha\))$", rows[-1]), (trial_id, rows)
    # What the default leaves out: Tune's boxed configs and results, Ray's INFO lines, worker output.
    assert "Configuration for experiment" not in out and "Trial status" not in out
    assert "(actor_trial pid=" not in out and "INFO worker.py" not in out
    assert "TrainingReport(" not in out
    assert "locked test split" in out and f"Best trial {summary['best_trial_id']}" in out


def test_verbose_prints_tunes_and_the_workers_output_too(tmp_path, data_dir):
    verbose_out, _ = run_search(tmp_path, data_dir, "--verbose")
    assert len(verbose_out.splitlines()) > MAX_LINES_3_TRIALS + 50
    assert "Trial status" in verbose_out and "(actor_trial pid=" in verbose_out
