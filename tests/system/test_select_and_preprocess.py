"""End to end: train on A, select on B, report on C. A search over two collections (the dev set's layout and
other hospitals' films with a labels CSV) that holds two origins out (--holdout-origin) and selects on films from
other sources (--select-on), with preprocessing chosen by the space (crop to the lungs with the dataset's own
segmenter, CLAHE); its registered model predicting a film that has no mask; the folder it selected on, and a
held-out origin as the select-on set, refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tune_ct.data.files import CLASSES
from tune_ct.track.uri import connect

from helpers.films import make_external_collection
from helpers.search_cli import REPO

HELD_OUT = ["covid-cxnet", "openist"]


def dataset_with_masks(src: Path, dst: Path, per_class: int) -> Path:
    """Real films with their lung masks, where the shared set has them (Lung_Opacity, Viral Pneumonia)."""
    for label in CLASSES:
        for f in sorted((src / label / "images").iterdir())[:per_class]:
            for kind in ("images", "masks"):
                if (src / label / kind / f.name).is_file():
                    (dst / label / kind).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / label / kind / f.name, dst / label / kind / f.name)
    return dst


def other_source(src: Path, dst: Path, per_class: int, start: int) -> Path:
    """Three classes in plain class folders, spelled as another hospital might: not the training films."""
    for label, folder in (("COVID", "covid"), ("Normal", "NORMAL"), ("Viral Pneumonia", "viral_pneumonia")):
        (dst / folder).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / label / "images").iterdir())[start : start + per_class]:
            shutil.copyfile(f, dst / folder / f.name)
    return dst


def run(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(1200)
def test_search_selects_on_other_sources_with_lung_crop_and_clahe(tmp_path, data_dir):
    data = dataset_with_masks(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=24)
    select = other_source(data_dir, tmp_path / "other_hospital", per_class=6, start=200)
    more = make_external_collection(data_dir.parent / "external_dev", tmp_path / "ext", per_origin=3)
    (tmp_path / "data.yaml").write_text(f"collections:\n  - root: {data}\n  - name: ext\n    root: {more}\n"
                                        f"    labels: {more / 'labels.csv'}\n")
    space = yaml.safe_load((REPO / "tests/spaces/tiny.yaml").read_text())
    space["search"].update(metric="ext_val_macro_f1", num_samples=2)
    space["params"].update(lung_crop=True, equalize={"choice": ["none", "clahe"]})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = run(tmp_path, "tune_ct.search", "--data", str(tmp_path / "data.yaml"), "--space",
               str(tmp_path / "space.yaml"), "--holdout-origin", HELD_OUT[0], "--holdout-origin", HELD_OUT[1],
               "--select-on", str(select), "--experiment", "sel", "--register-name", "sel-model",
               "--summary", str(tmp_path / "summary.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    check_held_out(tmp_path, summary, client=MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), out=proc.stdout)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["tune_ct.select_on.n"] == "18" and parent.data.tags["tune_ct.select_on.hash"]
    assert parent.data.tags["tune_ct.select_on.classes"] == "COVID,Normal,Viral Pneumonia"
    assert 0.0 <= parent.data.metrics["lung_segmenter_dice_heldout"] <= 1.0

    # Every epoch of every trial scored the other hospital's films, and the best trial is the best by that.
    scores = {}
    for run_id in summary["child_run_ids"]:
        history = client.get_metric_history(run_id, "ext_val_macro_f1")
        assert sorted(m.step for m in history) == [1, 2]
        scores.update({(run_id, m.step): m.value for m in history})
    best = max(scores.values())
    assert summary["val_metrics"]["val_macro_f1"] is not None
    assert abs(float(parent.data.metrics["best_val_macro_f1"]) - summary["val_metrics"]["val_macro_f1"]) < 1e-9
    chosen = client.get_run(parent.data.tags["tune_ct.best_run_id"])
    chosen_score = scores[(chosen.info.run_id, summary["best_epoch"])]
    assert chosen_score == pytest.approx(best), (chosen_score, scores)
    assert summary["best_config"]["lung_crop"] is True
    # The summary names the metric that chose the winner, where it was measured, and its value.
    assert summary["selection"] == {"metric": "ext_val_macro_f1", "mode": "max", "value": pytest.approx(best),
                                    "split": "select-on set other_hospital"}
    assert summary["val_metrics"]["ext_val_macro_f1"] == pytest.approx(best)
    assert "best ext_val_macro_f1 so far (select-on set)" in proc.stdout  # the live table names its set

    # The registered model carries its segmenter and predicts a film that comes without a mask.
    film = next(f for f in sorted((data_dir / "COVID" / "images").iterdir())[300:])
    assert not (data_dir / "COVID" / "masks" / film.name).exists()
    proc = run(tmp_path, "tune_ct.predict", "--model", "models:/sel-model/1", "--json", str(film))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["predictions"][0]["predicted"] in CLASSES
    import mlflow

    connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/sel-model/1", dst_path=str(tmp_path / "dl")))
    assert (local / "extra_files" / "lungs.pt").is_file()

    # The folder it selected on cannot give the final figure; another one can.
    proc = run(tmp_path, "tune_ct.evaluate", "--model", "models:/sel-model/1", "--external", str(select))
    assert proc.returncode == 2 and "select" in proc.stderr, proc.stderr[-2000:]
    fresh = other_source(data_dir, tmp_path / "third_hospital", per_class=5, start=400)
    proc = run(tmp_path, "tune_ct.evaluate", "--model", "models:/sel-model/1", "--external", str(fresh),
               "--json", str(tmp_path / "ext.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ext.json").read_text())["n"] == 15


def check_held_out(tmp_path: Path, summary: dict, client, out: str) -> None:
    """The held-out origins reached no trial and were scored once, per origin; the roles are on the parent run;
    a held-out origin cannot be the select-on set."""
    assert summary["collections"] == {"ext": str((tmp_path / "ext").resolve())}
    assert summary["origins"] == {"trained_on": ["hannover-mhh", "nih-cxr14", "unknown"],
                                  "selected_on": ["other_hospital"], "held_out": HELD_OUT}
    trainval = json.loads(Path(summary["trainval_subset"]).read_text())["files"]
    assert len(trainval) > 40 and not [f for f in trainval if any(o in f[0] for o in HELD_OUT)]
    assert sum("hannover-mhh" in f[0] or "nih-cxr14" in f[0] for f in trainval) >= 3  # the second collection
    per_origin = summary["held_out"]["per_origin"]
    assert {o: (v["n"], v["classes"]) for o, v in per_origin.items()} == {"covid-cxnet": (3, ["COVID"]),
                                                                         "openist": (3, ["Normal"])}
    assert summary["held_out"]["pooled"]["n"] == 6 and 0 <= summary["held_out"]["pooled"]["macro_f1"] <= 1
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["tune_ct.origins.held_out"] == ",".join(HELD_OUT)
    assert parent.data.metrics["holdout_covid-cxnet_macro_f1"] == pytest.approx(per_origin["covid-cxnet"]["macro_f1"])
    assert "| covid-cxnet | held out | 3 | COVID |" in parent.data.tags["mlflow.note.content"]
    assert "covid-cxnet | held out | 3 | COVID" in out
    labels = tmp_path / "openist.csv"
    labels.write_text("file,label,origin\n" + "".join(
        line + "\n" for line in (tmp_path / "ext" / "labels.csv").read_text().splitlines() if "openist" in line))
    # evaluate, without --data, rebuilds the manifest the search used (its collections and held-out origins).
    proc = run(tmp_path, "tune_ct.evaluate", "--model", "models:/sel-model/1", "--json", str(tmp_path / "test.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "test.json").read_text())["manifest_hash"] == summary["manifest_hash"]
    proc = run(tmp_path, "tune_ct.search", "--data", str(tmp_path / "data.yaml"), "--space", str(tmp_path / "space.yaml"),
               "--holdout-origin", "openist", "--select-on", str(tmp_path / "ext"), "--select-on-labels", str(labels))
    assert proc.returncode == 2 and "held out (--holdout-origin)" in proc.stderr, proc.stderr[-2000:]
