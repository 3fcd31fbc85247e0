"""The live trial table's rows, and the data stage's progress bars on stderr when asked for (or when stderr is a
terminal). What a whole search prints: tests/system/test_search_shared.py and test_console_verbose.py."""

from __future__ import annotations

import io
import sys
from pathlib import Path


from tune_ct.data import manifest as mf
from tune_ct.data.cache import open_or_build
from tune_ct.data.subsets import write_split_subset
from tune_ct.data.workdir import WorkFolder
from tune_ct.track.trial_table import COLUMNS, format_row, stop_reason



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
        subset, _ = write_split_subset(manifest, small_dataset, WorkFolder(workdir), None, 0, ("train", "val"),
                                       "trainval")
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


