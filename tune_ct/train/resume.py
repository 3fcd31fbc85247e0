"""What `--resume` needs to pick up a search whose driver died: a small JSON record next to the Tune experiment.

`<storage>/<name>/tune_ct_search.json` holds the MLflow parent run id and experiment id, so a resumed search logs
into the same parent run (and the TrialTracker finds each trial's child run by its trial-id tag). It is written
before the first trial starts, on the same storage as the experiment (a folder or s3://), so it survives the
loss of the driver's machine. If it is missing, the parent run is found by the tag `tune_ct.tune_experiment`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from tune_ct.track.tags import TUNE_EXPERIMENT

STATE_FILE = "tune_ct_search.json"


class ResumeError(RuntimeError):
    """The search cannot be resumed; the message says why and what to do."""


@dataclass
class SearchRecord:
    name: str  # the Tune experiment name (folder under --storage)
    parent_run_id: str
    experiment_id: str
    mlflow_experiment: str
    space: str
    num_samples: int


def _fs(storage: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage)


def write_record(storage: str, record: SearchRecord) -> None:
    fs, root = _fs(storage)
    fs.create_dir(f"{root}/{record.name}", recursive=True)
    with fs.open_output_stream(f"{root}/{record.name}/{STATE_FILE}") as f:
        f.write(json.dumps(asdict(record), indent=1).encode())


def read_record(storage: str, name: str) -> SearchRecord | None:
    import pyarrow.fs

    fs, root = _fs(storage)
    path = f"{root}/{name}/{STATE_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return SearchRecord(**json.loads(f.read()))


def latest_search(storage: str) -> str:
    """The newest experiment under storage that Tune can restore (names are search-YYYYmmdd-HHMMSS)."""
    import pyarrow.fs

    fs, root = _fs(storage)
    info = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    names = sorted((i.base_name for i in info if i.type == pyarrow.fs.FileType.Directory
                    and fs.get_file_info(f"{root}/{i.base_name}/tuner.pkl").type == pyarrow.fs.FileType.File),
                   key=lambda n: fs.get_file_info(f"{root}/{n}/tuner.pkl").mtime)
    if not names:
        raise ResumeError(f"--resume: no Tune experiment (tuner.pkl) under {storage}: pass the --storage the "
                          "search ran with, or start a new search without --resume")
    return names[-1]


def find_parent_run(client, experiment_id: str, name: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TUNE_EXPERIMENT}` = '{name}'", max_results=1)
    return runs[0].info.run_id if runs else None
