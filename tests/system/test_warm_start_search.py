"""--warm-start on a real search: a second search on the same data, in a folder holding the shared search's Optuna
storage, seeds its study with the earlier trials that fit its space (the rest skipped and counted), runs only its
own trials and records what came in on the parent run and in the summary."""

from __future__ import annotations

import shutil

import optuna
from helpers.search_cli import SPACES, run_search_cli
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tune_ct.track.warm_start import IMPORTED_FROM


def narrower_space(lr_high: float) -> str:
    """tests/spaces/tiny.yaml with its lr range cut at `lr_high` (fixed values unchanged: same configurations)."""
    text = (SPACES / "tiny.yaml").read_text()
    return text.replace("lr: {loguniform: [1.0e-3, 1.0e-2]}", f"lr: {{loguniform: [1.0e-3, {lr_high!r}]}}")


def test_a_warm_started_search_imports_what_fits_and_records_it(tiny_search, tmp_path, data_dir):
    shutil.copy(tiny_search.folder / "optuna.db", tmp_path / "optuna.db")
    # The first search's locked manifest too, as in the folder it ran in (the whole dev set is not hashed again).
    shutil.copytree(tiny_search.folder / ".tune_ct" / "manifests", tmp_path / ".tune_ct" / "manifests")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    source = optuna.load_study(study_name=tiny_search.name, storage=url)
    told = [t for t in source.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(told) == 3, [t.state for t in source.trials]
    lrs = sorted(t.params["lr"] for t in told)
    (tmp_path / "narrow.yaml").write_text(narrower_space(lrs[1]))  # the largest lr falls outside
    _, summary = run_search_cli(tmp_path, data_dir, "narrow.yaml", "--name", "second", "--num-samples", "1",
                                "--warm-start", tiny_search.name)

    assert summary["warm_start"] == {"studies": [tiny_search.name], "imported": 2, "skipped": 1, "refused": {}}
    study = optuna.load_study(study_name="second", storage=url)
    imported = [t for t in study.trials if t.user_attrs.get(IMPORTED_FROM) == tiny_search.name]
    fits = sorted((t.params["lr"], t.state, t.value) for t in told if t.params["lr"] <= lrs[1])
    assert sorted((t.params["lr"], t.state, t.value) for t in imported) == fits
    own = [t for t in study.trials if IMPORTED_FROM not in t.user_attrs]
    assert len(own) == 1 and own[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert summary["trials"] == 1 and len(summary["child_run_ids"]) == 1  # imported trials are not run again

    parent = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["parent_run_id"])
    assert parent.data.params["warm_start"] == f"2 trials from {tiny_search.name} (1 skipped)"
    assert parent.data.params["sampler"] == summary["sampler"]["kind"]
