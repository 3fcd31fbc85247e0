"""External validation on real films: loading another hospital's folder (any subset of the classes, plain or
Kaggle layout, or a labels CSV), the report over the classes present, the command against a real SQLite MLflow
store (evaluation run, version tags, the select-on refusal), the promotion gate and the search report's table.
No Ray, no MLflow server: an untrained baseline CNN at 32 px."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score

from tune_ct.commands import evaluate, promote
from tune_ct.data.external_set import load_external
from tune_ct.data.files import CLASSES, DataError, decode_file, resize
from tune_ct.data.manifest import read_sources
from tune_ct.evaluate.evaluation import Evaluation
from tune_ct.evaluate.full_report import flat_metrics, format_report, full_report
from tune_ct.evaluate.metrics import classification_metrics
from tune_ct.search.markdown_report import external_section
from tune_ct.evaluate.statistics import _from_confusion
from tune_ct.model.networks import build_model
from tune_ct.registry.gates import GateError, check_gates, load_gates
from tune_ct.registry.models import log_and_register
from tune_ct.track.runs import ensure_experiment

from helpers.films import checkpoint_meta, make_small_dataset

NAME = "ext-test"
SIZE = 32
PER_CLASS = 9
# Another hospital's spelling of the class folders; Lung_Opacity is absent on purpose.
FOLDERS = {"COVID": "covid", "Normal": "NORMAL", "Viral Pneumonia": "viral_pneumonia"}
PRESENT = ["COVID", "Normal", "Viral Pneumonia"]


def real_films(data_dir, label: str, n: int = PER_CLASS, start: int = 200):
    return sorted((data_dir / label / "images").iterdir())[start:start + n]


@pytest.fixture(scope="module")
def external(data_dir, tmp_path_factory):
    """`hospital_b/<class>/*.png` with three classes, three broken films and one non-image file."""
    root = tmp_path_factory.mktemp("ext") / "hospital_b"
    for label, folder in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        for f in real_films(data_dir, label):
            shutil.copyfile(f, root / folder / f.name)
    good = real_films(data_dir, "Normal")[0].read_bytes()
    (root / "covid" / "truncated.png").write_bytes(good[:300])
    (root / "NORMAL" / "empty.png").write_bytes(b"")
    (root / "viral_pneumonia" / "notes.png").write_text("films were scanned on 3 March\n")
    (root / "README.txt").write_text("from hospital B\n")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_dir):
    """One registered version (untrained baseline CNN) in a SQLite store, trained 'on' a small real dataset."""
    root = tmp_path_factory.mktemp("ext_registry")
    dataset = make_small_dataset(data_dir, root / "COVID-19_Radiography_Dataset", per_class=8)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = ensure_experiment(client, "ext-search", root / "artifacts")
    example = resize(decode_file(next((dataset / "COVID" / "images").iterdir()))[0], SIZE)[None]
    torch.manual_seed(0)
    saved = checkpoint_meta("baseline_cnn", SIZE)
    run = client.create_run(exp)
    log_and_register(uri, run.info.run_id, build_model("baseline_cnn", SIZE), saved, example, NAME,
                     {"data": str(dataset)}, {"tune_ct.data": str(dataset)})
    return {"uri": uri, "client": client, "root": root, "source_run": run.info.run_id}


def run_external(store, folder, *extra: str) -> int:
    return evaluate.main(["--model", f"models:/{NAME}/1", "--external", str(folder), "--tracking-uri", store["uri"],
                          "--workdir", str(store["root"] / "wd"), "--bootstrap", "100", *extra])


@pytest.fixture(scope="module")
def evaluated(store, external, tmp_path_factory):
    """The command run once on the external folder as `hospital-b`: its exit status, JSON and console text."""
    out = tmp_path_factory.mktemp("ext_json") / "external.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # capsys is function-scoped; the run is shared by several tests
        rc = run_external(store, external, "--name", "hospital-b", "--json", str(out))
    return {"rc": rc, "report": json.loads(out.read_text()) if out.exists() else None, "stdout": buf.getvalue()}


# ---- load_external ---------------------------------------------------------------------------------------------

def test_plain_class_folders_with_three_classes_and_broken_films(external):
    ext = load_external(external)
    assert ext.name == "hospital_b" and ext.root == external.resolve()
    assert len(ext.entries) == 3 * PER_CLASS and ext.classes_present == PRESENT
    assert ext.class_counts() == {c: PER_CLASS for c in PRESENT}
    assert all(e.split == "external" and e.origin == "unknown" and len(e.sha) == 64 for e in ext.entries)
    reasons = {s.file: s.reason for s in ext.unreadable}
    assert set(reasons) == {"covid/truncated.png", "NORMAL/empty.png", "viral_pneumonia/notes.png"}
    assert "truncated" in reasons["covid/truncated.png"] and "empty file" in reasons["NORMAL/empty.png"]
    assert "not an image" in reasons["viral_pneumonia/notes.png"]
    assert [(s.file, "not an image file" in s.reason) for s in ext.ignored] == [("README.txt", True)]
    assert len(ext.content_hash) == 16 and int(ext.content_hash, 16) >= 0


def test_content_hash_ignores_folder_and_file_names_but_not_labels(external, tmp_path):
    kaggle = tmp_path / "renamed"  # the Kaggle layout, other class spellings, other file names
    for k, (label, folder) in enumerate(FOLDERS.items()):
        dst = kaggle / label.lower().replace(" ", "-") / "images"
        dst.mkdir(parents=True)
        for i, f in enumerate(sorted((external / folder).glob("*-*.png"))):
            shutil.copyfile(f, dst / f"film_{k}_{i}.png")
    ext, again = load_external(external), load_external(kaggle, name="b2")
    assert again.name == "b2" and len(again.entries) == len(ext.entries) and not again.unreadable
    assert again.content_hash == ext.content_hash
    moved = next((kaggle / "normal" / "images").iterdir())
    (kaggle / "covid" / "images").joinpath(moved.name).write_bytes(moved.read_bytes())
    moved.unlink()  # the same films, one now labelled COVID: another set
    assert load_external(kaggle).content_hash != ext.content_hash


def write_labels(path, rows, header=("file", "label", "origin")) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def labelled(external, sources_csv, tmp_path):
    """The same readable films flat in one folder (one outside it, absolute), labels and origins in a CSV."""
    origins = read_sources(sources_csv)
    flat, outside = tmp_path / "flat", tmp_path / "elsewhere"
    flat.mkdir()
    outside.mkdir()
    rows = []
    for label, folder in FOLDERS.items():
        for i, f in enumerate(sorted((external / folder).glob("*-*.png"))):
            origin = origins.get(f"{label}/images/{f.name}", "")
            target = (outside if (label, i) == ("COVID", 0) else flat) / f"x{len(rows):03d}.png"
            shutil.copyfile(f, target)
            rows.append([str(target) if target.parent == outside else target.name, label.upper(), origin])
    rows.append(["missing.png", "normal", "site-1"])  # listed, not there: unreadable, not a crash
    shutil.copyfile(external / "covid" / "truncated.png", flat / "cut.png")
    rows.append(["cut.png", "Covid", ""])
    (flat / "stray.png").write_bytes((flat / "x001.png").read_bytes())  # in the folder, not in the CSV
    write_labels(tmp_path / "labels.csv", rows)
    return flat, tmp_path / "labels.csv"


def test_labels_csv_with_origins_gives_the_same_set(external, labelled):
    flat, labels = labelled
    ext = load_external(flat, labels)
    assert ext.labels_csv == labels and ext.name == "flat"
    assert len(ext.entries) == 3 * PER_CLASS and ext.classes_present == PRESENT
    assert ext.content_hash == load_external(external).content_hash  # same films, same labels
    assert any(e.file.startswith("/") for e in ext.entries)  # the film outside the folder, by absolute path
    assert {s.file for s in ext.unreadable} == {"missing.png", "cut.png"}
    assert [s.file for s in ext.ignored] == ["stray.png"] and "not listed in labels.csv" in ext.ignored[0].reason
    known = ext.origins()
    assert known and set(known.values()) <= {e.origin for e in ext.entries}


def test_unknown_label_is_named_with_the_csv_and_row(tmp_path, external):
    films = sorted((external / "covid").glob("*-*.png"))[:3]
    labels = tmp_path / "labels.csv"
    write_labels(labels, [[str(films[0]), "covid"], [str(films[1]), "Viral-Pneumonia"], [str(films[2]), "TB"]],
                 header=("file", "label"))
    with pytest.raises(DataError) as err:
        load_external(tmp_path, labels)
    msg = str(err.value)
    assert str(labels) in msg and "row 3" in msg and "'TB'" in msg and "Lung_Opacity" in msg
    write_labels(labels, [[str(films[0]), "covid"]], header=("path", "class"))
    with pytest.raises(DataError, match="lacks column"):
        load_external(tmp_path, labels)


def test_no_readable_film_names_the_folder_and_the_layouts(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "list.xlsx").write_bytes(b"PK")
    (tmp_path / "scans" / "normal").mkdir()
    (tmp_path / "scans" / "normal" / "a.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_external(tmp_path / "scans")
    msg = str(err.value)
    assert str(tmp_path / "scans") in msg and "<class>/images/*.png" in msg and "--labels" in msg
    assert "a.png" in msg  # why the one film was unusable
    with pytest.raises(DataError, match="pass --name"):
        load_external(tmp_path / "scans", name="St Mary's")


# ---- the report over the classes present -----------------------------------------------------------------------

def synthetic(n: int = 60, seed: int = 3) -> Evaluation:
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 2, 3], n)  # no Lung_Opacity films
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.0  # better than chance, and some films called Lung_Opacity
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Evaluation("external", [f"f{i}" for i in range(n)], y, probs,
                      classification_metrics(y, probs.argmax(1), "external_"))


def test_report_covers_the_classes_present_and_counts_absent_predictions():
    ev = synthetic()
    pred = ev.probs.argmax(1)
    assert (pred == 1).any()
    r = full_report(ev, n_boot=200, classes=PRESENT)
    assert r["macro_f1"] == pytest.approx(f1_score(ev.y_true, pred, labels=[0, 2, 3], average="macro"))
    assert r["macro_f1"] > classification_metrics(ev.y_true, pred)["macro_f1"]  # not pulled down by a 0
    assert list(r["per_class"]) == PRESENT and r["classes"] == PRESENT
    assert r["absent_classes"] == ["Lung_Opacity"]
    assert r["n_predicted_as_absent"] == int((pred == 1).sum())
    assert r["predicted_as_absent"]["Lung_Opacity"] == pytest.approx((pred == 1).mean())
    cm = np.array(r["confusion_matrix"])
    assert cm.shape == (4, 4) and cm[1].sum() == 0 and cm[:, 1].sum() == (pred == 1).sum()
    lo, hi = r["ci95"]["macro_f1"]
    assert lo <= r["macro_f1"] <= hi
    # The bootstrap's macro-F1 is over the same classes: on the full sample it equals sklearn's.
    full_cm = np.bincount(ev.y_true * 4 + pred, minlength=16).reshape(4, 4)
    assert _from_confusion(full_cm, [0, 2, 3])["macro_f1"] == pytest.approx(r["macro_f1"])
    metrics = flat_metrics(r)
    assert "external_predicted_as_lung_opacity" in metrics and "external_recall_lung_opacity" not in metrics
    assert "films called a class the set does not have" in format_report(r)


def test_report_with_all_four_classes_is_unchanged():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    probs = rng.dirichlet(np.ones(4), 40)
    ev = Evaluation("test", [f"f{i}" for i in range(40)], y, probs, classification_metrics(y, probs.argmax(1), "test_"))
    assert full_report(ev, n_boot=100) == full_report(ev, n_boot=100, classes=list(CLASSES))
    assert "absent_classes" not in full_report(ev, n_boot=100)


# ---- the command, MLflow, the refusal --------------------------------------------------------------------------

def test_command_scores_the_external_set_and_tags_the_version(evaluated, store, external):
    assert evaluated["rc"] == 0
    r = evaluated["report"]
    for key in ("n", "classes_present", "accuracy", "macro_f1", "per_class_recall", "confusion_matrix",
                "unreadable", "content_hash", "name"):
        assert key in r, key
    ext = load_external(external)
    assert r["n"] == 3 * PER_CLASS and r["classes_present"] == PRESENT and r["name"] == "hospital-b"
    assert r["content_hash"] == ext.content_hash and len(r["unreadable"]) == 3
    assert set(r["per_class_recall"]) == set(PRESENT)
    cm = np.array(r["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == r["n"] and cm[1].sum() == 0
    y_true = np.repeat(np.repeat(np.arange(4), 4), cm.ravel())  # the predictions, rebuilt from the matrix
    y_pred = np.repeat(np.tile(np.arange(4), 4), cm.ravel())
    assert r["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 2, 3], average="macro",
                                                   zero_division=0))
    out = evaluated["stdout"]
    assert "External set hospital-b: n=27" in out and ext.content_hash in out
    assert "unreadable: 3" in out and "covid/truncated.png" in out and "ignored: 1" in out


def test_evaluation_run_and_version_tags(evaluated, store):
    client = store["client"]
    assert evaluated["rc"] == 0
    exp = client.get_experiment_by_name("tune_ct-evaluations")
    assert exp.artifact_location.startswith((store["root"] / "mlartifacts").as_uri())  # beside the store
    runs = client.search_runs([exp.experiment_id], "tags.`tune_ct.external.name` = 'hospital-b'")
    assert len(runs) == 1
    run, r = runs[0], evaluated["report"]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["tune_ct.role"] == "external_evaluation" and tags["tune_ct.model_name"] == NAME
    assert tags["tune_ct.model_version"] == "1" and tags["tune_ct.external.hash"] == r["content_hash"]
    assert run.data.metrics["external_macro_f1"] == pytest.approx(r["macro_f1"])
    assert "external_macro_f1_ci_low" in run.data.metrics and "external_accuracy" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/external_evaluation.json", "evaluation/external_confusion_matrix.png"} <= logged
    vtags = client.get_model_version(NAME, "1").tags
    assert float(vtags["tune_ct.external.hospital-b.macro_f1"]) == pytest.approx(r["macro_f1"])
    assert vtags["tune_ct.external.hospital-b.hash"] == r["content_hash"]
    assert vtags["tune_ct.external.hospital-b.run_id"] == run.info.run_id


def test_set_the_search_selected_on_is_refused(evaluated, store, external, capsys):
    client = store["client"]
    client.set_tag(store["source_run"], "tune_ct.select_on.hash", load_external(external).content_hash)
    try:
        rc = run_external(store, external, "--name", "renamed-copy")
    finally:
        client.delete_tag(store["source_run"], "tune_ct.select_on.hash")
    err = capsys.readouterr().err
    assert rc == 2 and "selected on" in err and "renamed-copy" in err
    exp = client.get_experiment_by_name("tune_ct-evaluations")
    assert not client.search_runs([exp.experiment_id], "tags.`tune_ct.external.name` = 'renamed-copy'")


def test_a_checkpoint_on_a_labels_csv_is_scored_without_mlflow(labelled, tmp_path, capsys):
    flat, labels = labelled
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.manual_seed(0)
    torch.save({"model": build_model("baseline_cnn", SIZE).state_dict(), "backbone": "baseline_cnn",
                "image_size": SIZE, "classes": list(CLASSES), "hp": {}, "epoch": 0}, ckpt / "model.pt")
    out = tmp_path / "r.json"
    rc = evaluate.main(["--model", str(ckpt), "--external", str(flat), "--labels", str(labels), "--workdir",
                        str(tmp_path / "wd"), "--bootstrap", "50", "--json", str(out),
                        "--tracking-uri", f"sqlite:///{tmp_path / 'unused.db'}"])
    assert rc == 0 and not (tmp_path / "unused.db").exists()
    r = json.loads(out.read_text())
    assert r["n"] == 3 * PER_CLASS and {u["file"] for u in r["unreadable"]} == {"missing.png", "cut.png"}
    assert r["by_origin"] and sum(v["n"] for v in r["by_origin"].values()) == r["n"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:  # a usage error: exit status 2, as argparse's own
        evaluate.main(["--model", str(ckpt), "--external", str(flat), "--data", str(flat)])
    assert usage.value.code == 2 and "--data select the locked test split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        evaluate.main(["--model", str(ckpt), "--labels", str(labels)])
    assert usage.value.code == 2 and "pass --external" in capsys.readouterr().err


# ---- the promotion gate ----------------------------------------------------------------------------------------

def gates_file(tmp_path, gates: dict):
    path = tmp_path / "gates.yaml"
    path.write_text(json.dumps(gates))  # JSON is YAML
    return path


def test_external_gate_pass_fail_and_missing_tag():
    gates = {"min_macro_f1": 0.0, "min_covid_recall": 0.0, "max_class_drop": 0.05, "per_class_metric": "recall",
             "min_external_macro_f1": {"hospital-b": 0.6, "clinic-c": 0.5}}
    report = {"macro_f1": 0.9, "per_class": {c: {"recall": 0.9} for c in CLASSES}, "model": "models:/m/3"}
    tags = {"tune_ct.external.hospital-b.macro_f1": "0.61", "tune_ct.external.hospital-b.hash": "abc"}
    results = {r.gate: r for r in check_gates(gates, report, None, tags)}
    hospital = results["min_external_macro_f1[hospital-b]"]
    assert hospital.passed and hospital.value == 0.61 and "hash abc" in hospital.detail
    missing = results["min_external_macro_f1[clinic-c]"]
    assert not missing.passed and missing.value is None
    assert "python -m tune_ct.evaluate --model models:/m/3 --external DIR --name clinic-c" in missing.detail
    low = check_gates(gates, report, None, {**tags, "tune_ct.external.hospital-b.macro_f1": "0.5999"})
    assert not {r.gate: r for r in low}["min_external_macro_f1[hospital-b]"].passed
    assert [r.gate for r in check_gates({**gates, "min_external_macro_f1": {}}, report, None)] == [
        "min_macro_f1", "min_covid_recall", "max_class_drop"]  # no external gate: as before


@pytest.mark.parametrize("value, message", [({"hospital-b": 1.5}, r"min_external_macro_f1\[hospital-b\] must be"),
                                            ({"b": "high"}, "must be a number"), ([0.6], "must be a mapping"),
                                            ({"St Mary's": 0.6}, "not an external set name"), (None, "is empty")])
def test_external_gate_file_is_validated(tmp_path, value, message):
    path = gates_file(tmp_path, {"min_external_macro_f1": value})
    with pytest.raises(GateError, match=message) as err:
        load_gates(path)
    assert str(path) in str(err.value)


def test_promote_reads_the_external_tag(evaluated, store, tmp_path, capsys):
    assert evaluated["rc"] == 0
    base = {"min_macro_f1": 0.0, "min_covid_recall": 0.0, "max_class_drop": 1.0}
    argv = ["--model", NAME, "--version", "1", "--tracking-uri", store["uri"], "--workdir", str(store["root"] / "wd"),
            "--dry-run"]
    ok = gates_file(tmp_path, {**base, "min_external_macro_f1": {"hospital-b": 0.0}})
    assert promote.main([*argv, "--gates", str(ok)]) == 0
    assert "PASS  min_external_macro_f1[hospital-b]" in capsys.readouterr().out
    missing = gates_file(tmp_path, {**base, "min_external_macro_f1": {"clinic-c": 0.5}})
    assert promote.main([*argv, "--gates", str(missing)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  min_external_macro_f1[clinic-c]" in out
    assert f"--model models:/{NAME}/1 --external DIR --name clinic-c" in out


# ---- the search report -----------------------------------------------------------------------------------------

def test_search_report_lists_the_external_evaluations(evaluated, store):
    r = evaluated["report"]
    lines = external_section(store["client"], store["source_run"])  # found through the version's source run
    text = "\n".join(lines)
    assert f"## External sets ({NAME} v1)" in text
    row = next(line for line in lines if line.startswith("| hospital-b |"))
    assert r["content_hash"] in row and "| 27 |" in row and "COVID, Normal, Viral Pneumonia" in row
    assert f"{r['macro_f1']:.3f}" in row
    assert "Not evaluated" in "\n".join(external_section(store["client"], store["source_run"], (NAME, "9")))


def test_selection_on_single_class_origins_is_warned(tmp_path, capsys):
    """Two origins of one class each (hannover-mhh all COVID, openist all Normal): origin tells the class, so
    selecting on them rewards telling collections apart; a set whose origins mix classes is not warned about."""
    from tune_ct.data.external_set import ExternalEntry, ExternalSet
    from tune_ct.search.console import announce_selection

    def films(rows):
        return ExternalSet("sel", tmp_path, [ExternalEntry(f"f{i}.png", label, f"sha{i}", origin)
                                             for i, (label, origin) in enumerate(rows)])

    confounded = films([("COVID", "hannover-mhh")] * 3 + [("Normal", "openist")] * 4)
    assert confounded.one_class_origins() == {"hannover-mhh": "COVID", "openist": "Normal"}
    announce_selection(confounded, "ext_val_macro_f1")
    out = capsys.readouterr().out
    assert "WARNING" in out and "hannover-mhh: COVID, openist: Normal" in out
    mixed = films([("COVID", "covid-cxnet"), ("Normal", "nih-cxr14"), ("Lung_Opacity", "nih-cxr14")])
    unnamed = films([("COVID", "unknown"), ("Normal", "unknown")])
    one_class = films([("Normal", "openist")] * 2)
    assert [s.one_class_origins() for s in (mixed, unnamed, one_class)] == [None, None, None]
    announce_selection(mixed, "ext_val_macro_f1")
    assert "WARNING" not in capsys.readouterr().out
