"""Several collections in one manifest: --data values and data files parsed with clear errors, duplicates grouped
across collections, the primary's locked split kept when a collection is added, held-out origins never listed
for trials. Real films: the shared dev set and shared/data/external_dev."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers.films import make_external_collection, make_small_dataset
from tune_ct.data.collections import Collection, parse_data_values
from tune_ct.data.files import DataError
from tune_ct.data.prepare import DataSettings, prepare
from tune_ct.data.subsets import HELD_OUT_SPLIT, read_subset, write_held_out_subset
from tune_ct.data.workdir import WorkFolder


@pytest.fixture
def external_dir(data_dir) -> Path:
    return data_dir.parent / "external_dev"


def folder_collection(data_dir: Path, dst: Path, per_class: int = 10) -> Path:
    """A second hospital's folder with its own folder names and two classes only (COVID as 'covid19', Normal as
    'healthy'): films of the dev set's later numbers, so none is already in the primary fixture."""
    for label, folder in (("COVID", "covid19"), ("Normal", "healthy")):
        out = dst / folder
        out.mkdir(parents=True)
        for f in sorted((data_dir / label / "images").iterdir())[100:100 + per_class]:
            shutil.copyfile(f, out / f.name)
    return dst


def test_data_values_and_a_data_file_name_their_collections(tmp_path, data_dir, external_dir):
    primary = make_small_dataset(data_dir, tmp_path / "dev", per_class=2)
    (tmp_path / "data.yaml").write_text(
        "collections:\n  - root: dev\n  - name: ext\n    root: " + str(external_dir)
        + "\n    labels: " + str(external_dir / "labels.csv") + "\n    origins: [openist]\n"
        "    classes: {healthy: Normal}\n")
    found = parse_data_values([str(tmp_path / "data.yaml")], None)
    assert [c.name for c in found] == ["dev", "ext"]
    assert found[0].root == primary.resolve() and found[1].origins == ("openist",)
    assert found[1].classes == {"healthy": "Normal"} and found[1].labels == (external_dir / "labels.csv").resolve()
    named = parse_data_values([str(primary), f"hosp-b={external_dir}"], tmp_path / "s.csv")
    assert [c.name for c in named] == ["dev", "hosp-b"] and named[0].sources == tmp_path / "s.csv"


@pytest.mark.parametrize("text, message", [
    ("collections:\n  - root: nowhere\n", "does not exist"),
    ("collections:\n  - root: .\n    colour: red\n", "unknown key(s) colour"),
    ("collections:\n  - root: .\n    classes: {healthy: Healthy}\n", "classes.healthy"),
    ("collections:\n  - root: .\n    origins: openist\n", "origins must be a list"),
    ("folders: [a]\n", "expected `collections:`"),
])
def test_a_bad_data_file_names_the_key(tmp_path, text, message):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(DataError, match="data.yaml") as err:
        parse_data_values([str(tmp_path / "data.yaml")], None)
    assert message in str(err.value)


def test_two_collections_named_alike_are_refused(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="x used twice"):
        parse_data_values([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")], None)


def test_an_added_collection_keeps_the_lock_and_shares_duplicate_groups(tmp_path, data_dir):
    primary = make_small_dataset(data_dir, tmp_path / "dev", per_class=10)
    other = folder_collection(data_dir, tmp_path / "hosp_b", per_class=10)
    copied = sorted((primary / "COVID" / "images").iterdir())[0]
    shutil.copyfile(copied, other / "covid19" / ("copy-" + copied.name))  # one film in both collections
    work = WorkFolder(tmp_path / "work")
    alone = prepare(DataSettings(primary, work)).manifest
    more = (Collection(other.resolve(), "hosp_b", classes={"covid19": "COVID", "healthy": "Normal"}),)
    both = prepare(DataSettings(primary, work, more=more)).manifest

    before = {e.key: e.split for e in alone.entries}
    assert all(before[e.key] == e.split for e in both.entries if not e.collection)  # the lock kept
    assert both.hash != alone.hash and prepare(DataSettings(primary, work)).manifest.hash == alone.hash
    added = [e for e in both.entries if e.collection == "hosp_b"]
    assert len(added) == 21 and {e.label for e in added} == {"COVID", "Normal"}
    assert {e.origin for e in added} == {"hosp_b"}
    twin = next(e for e in added if e.file.startswith("covid19/copy-"))
    original = next(e for e in both.entries if e.key == f"COVID/images/{copied.name}")
    assert twin.group == original.group and twin.split == original.split  # one group across collections
    for label in ("COVID", "Normal"):  # stratified by class and origin: the new origin in every split
        assert {e.split for e in added if e.label == label and e is not twin} == {"train", "val", "test"}
    assert both.film_path(twin) == str(other.resolve() / twin.file)


def test_a_labels_csv_collection_keeps_its_origins_and_counts_what_it_leaves(tmp_path, data_dir, external_dir):
    primary = make_small_dataset(data_dir, tmp_path / "dev", per_class=6)
    ext = make_external_collection(external_dir, tmp_path / "ext", per_origin=5)
    (tmp_path / "data.yaml").write_text(
        f"collections:\n  - root: {primary}\n  - root: {ext}\n    labels: {ext / 'labels.csv'}\n"
        "    origins: [openist, hannover-mhh]\n")
    found = parse_data_values([str(tmp_path / "data.yaml")], None)
    manifest = prepare(DataSettings(found[0].root, WorkFolder(tmp_path / "work"), more=tuple(found[1:]))).manifest
    added = [e for e in manifest.entries if e.collection == "ext"]
    assert sorted({e.origin for e in added}) == ["hannover-mhh", "openist"] and len(added) == 10
    left = [i for i in manifest.ignored if i.startswith("ext:") and "not in the collection's origins" in i]
    assert len(left) == 10  # covid-cxnet and nih-cxr14 films: counted, not dropped unseen


def test_held_out_origins_reach_no_trial_and_are_scored_whole(tmp_path, data_dir, external_dir):
    primary = make_small_dataset(data_dir, tmp_path / "dev", per_class=6)
    ext = make_external_collection(external_dir, tmp_path / "ext", per_origin=6)
    more = (Collection(ext.resolve(), "ext", labels=ext / "labels.csv"),)
    settings = DataSettings(primary, WorkFolder(tmp_path / "work"), more=more, held_out=("openist", "covid-cxnet"))
    prep = prepare(settings)
    trainval = read_subset(prep.trainval_path)["files"]
    assert not [f for f in trainval if "openist" in f[0] or "covid-cxnet" in f[0]] and len(trainval) > 20
    assert prep.trained_on() == ["hannover-mhh", "nih-cxr14", "unknown"]
    path, films = write_held_out_subset(prep.manifest, prep.root, settings.work, 0, settings.held_out)
    assert sorted({e.origin for e in films}) == ["covid-cxnet", "openist"] and len(films) == 12
    assert {row[2] for row in read_subset(path)["files"]} == {HELD_OUT_SPLIT}
    # A held-out film whose copy trials train on is not scored (counted by held_out_copies).
    from tune_ct.data.subsets import held_out_copies

    trained = next(e for e in prep.manifest.entries if e.split == "train" and not e.collection)
    copy = ext / "Normal" / "copy-of-a-trained-film.png"
    shutil.copyfile(prep.root / trained.file, copy)
    with (ext / "labels.csv").open("a") as fh:
        fh.write(f"Normal/{copy.name},{trained.label},openist\n")
    again = prepare(settings)
    assert [e.file for e in held_out_copies(again.manifest, settings.held_out)] == [f"Normal/{copy.name}"]
    path, films = write_held_out_subset(again.manifest, again.root, settings.work, 0, settings.held_out)
    assert len(films) == 12 and copy.name not in read_subset(path)["files"].__repr__()
    with pytest.raises(DataError, match="origins present: covid-cxnet, hannover-mhh"):
        prepare(DataSettings(primary, settings.work, more=more, held_out=("openlst",)))


def test_a_models_data_spec_gives_back_its_collections_and_held_out_origins(tmp_path):
    from tune_ct.data.collections import data_spec, read_data_spec
    from tune_ct.data.prepare import as_recorded

    more = (Collection(tmp_path, "ext", labels=tmp_path / "l.csv", origins=("openist",), classes={"h": "Normal"}),)
    assert data_spec((), ()) is None and read_data_spec(None) == ((), ())
    assert read_data_spec(data_spec(more, ("covid-cxnet",))) == (more, ("covid-cxnet",))
    settings = as_recorded(DataSettings(None, WorkFolder(tmp_path)), "/data/dev", data_spec(more, ("covid-cxnet",)))
    assert (settings.data, settings.more, settings.held_out) == ("/data/dev", more, ("covid-cxnet",))
    given = DataSettings("/elsewhere", WorkFolder(tmp_path))
    assert as_recorded(given, "/data/dev", data_spec(more, ())) is given  # --data given: it wins


def test_narrowing_a_collections_origins_keeps_the_rest_locked_and_loses_nothing(tmp_path, data_dir, external_dir):
    primary = make_small_dataset(data_dir, tmp_path / "dev", per_class=6)
    ext = make_external_collection(external_dir, tmp_path / "ext", per_origin=8)
    work = WorkFolder(tmp_path / "work")

    def build(origins):
        more = (Collection(ext.resolve(), "ext", labels=ext / "labels.csv", origins=origins),)
        return prepare(DataSettings(primary, work, more=more))

    wide = build(("openist", "hannover-mhh"))
    narrow = build(("openist",))
    assert not narrow.report.test_missing and not narrow.manifest.lost_test
    splits = {e.key: e.split for e in wide.manifest.entries}
    assert all(splits[e.key] == e.split for e in narrow.manifest.entries)
    assert {e.origin for e in narrow.manifest.entries if e.collection} == {"openist"}
