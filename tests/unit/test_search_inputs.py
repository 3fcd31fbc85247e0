"""Bad input to `python -m tune_ct.search` fails before any compute, with a message naming the file and key (the
command's main() in this process: the checks run before Ray, so no cluster is needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tune_ct.train.space import SpaceError, load_space

from helpers.search_cli import REPO
GOOD = yaml.safe_load((REPO / "tests/spaces/tiny.yaml").read_text())


def write_space(tmp_path: Path, params_patch: dict | None = None, search_patch: dict | None = None) -> Path:
    space = {"search": dict(GOOD["search"], **(search_patch or {})), "params": dict(GOOD["params"], **(params_patch or {}))}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


class Finished:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def run_search(monkeypatch, capsys):
    """`python -m tune_ct.search ARGS` in folder `cwd`: its exit status and stderr."""
    from tune_ct.commands import search

    def run(args: list[str], cwd: Path) -> Finished:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = search.main(args)
        except SystemExit as exc:  # a command line that cannot work exits as argparse does
            code = exc.code
        return Finished(code, capsys.readouterr().err)

    return run


BAD_PARAMS = [
    ({"backbone": {"choice": ["baseline_cnn", "resnet_999_not_a_model"]}}, "params.backbone", "unknown backbone"),
    ({"lr": {"gaussian": [0.0, 1.0]}}, "params.lr.gaussian", "unknown distribution"),
    ({"lr": {"loguniform": [0.01, 0.001]}}, "params.lr.loguniform", "low < high"),
    ({"lr": {"loguniform": [0.0, 0.1]}}, "params.lr", "outside the allowed range"),
    ({"epochs": 0}, "params.epochs", "outside the allowed range"),
    ({"batch_size": {"uniform": [8, 32]}}, "params.batch_size.uniform", "whole number"),
    ({"image_size": {"randint": [64]}}, "params.image_size.randint", "[low, high]"),
    ({"learning_rate": 0.1}, "params.learning_rate", "unknown parameter"),
]


@pytest.mark.parametrize("patch, key, words", BAD_PARAMS)
def test_bad_space_is_rejected_naming_file_and_key(tmp_path, patch, key, words):
    space = write_space(tmp_path, patch)
    with pytest.raises(SpaceError) as err:
        load_space(space)
    assert key in str(err.value) and words in str(err.value) and str(space) in str(err.value)


@pytest.mark.parametrize("patch, key, words", BAD_PARAMS[:3])  # unknown backbone, distribution, bad range
def test_bad_space_stops_the_command_before_compute(tmp_path, data_dir, run_search, patch, key, words):
    space = write_space(tmp_path, patch)
    proc = run_search(["--data", str(data_dir), "--space", str(space)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and words in proc.stderr and str(space) in proc.stderr
    # Nothing was computed or recorded: no manifest, no MLflow store, no Ray results.
    assert not (tmp_path / ".tune_ct").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "ray_results").exists()


def test_bad_search_setting_names_the_key(tmp_path):
    with pytest.raises(SpaceError, match=r"search\.metric: unknown metric 'val_auc'"):
        load_space(write_space(tmp_path, search_patch={"metric": "val_auc"}))


@pytest.mark.parametrize("value, ok", [("auto", True), (0, True), (0.25, True), (2, True), (1.5, False),
                                       (-1, False), ("half", False), (True, False)])
def test_gpus_per_worker_is_auto_a_fraction_or_whole(tmp_path, value, ok):
    path = write_space(tmp_path, search_patch={"gpus_per_worker": value})
    if ok:
        assert load_space(path).search.gpus_per_worker == value
    else:
        with pytest.raises(SpaceError, match=r"search\.gpus_per_worker: expected auto, a fraction"):
            load_space(path)


@pytest.mark.parametrize("folder, create, words", [("no_such_folder", False, "does not exist"),
                                                   ("empty", True, "no images found")])
def test_missing_or_empty_data_folder_fails_before_compute(tmp_path, run_search, folder, create, words):
    data = tmp_path / folder
    if create:
        data.mkdir()
    proc = run_search(["--data", str(data), "--space", str(REPO / "tests/spaces/tiny.yaml")], tmp_path)
    assert proc.returncode == 2
    assert words in proc.stderr and folder in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_class_without_images_is_named(tmp_path, small_dataset, run_search):
    for f in (small_dataset / "Viral Pneumonia" / "images").iterdir():
        f.unlink()
    proc = run_search(["--data", str(small_dataset), "--space", str(REPO / "tests/spaces/tiny.yaml")], tmp_path)
    assert proc.returncode == 2 and "Viral Pneumonia" in proc.stderr


def test_shipped_spaces_are_valid():
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        space = load_space(path)
        assert space.max_epochs >= 1 and space.tune_space()
