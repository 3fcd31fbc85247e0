"""The search's data as MLflow dataset inputs: one dataset per split, digest = the manifest hash, logged with the
input tag mlflow.data.context = train / val / test, so MLflow's UI shows on every run which films it used.

Trials (child runs) get train and val: the test split never reaches a trial, so only the parent run, which
evaluates the winner once on it, gets test as well.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from tune_ct.data.files import CLASSES


@dataclass(frozen=True)
class SplitInput:
    """What MLflow is told about one split: plain values, so a Tune callback holding them pickles."""

    name: str
    digest: str
    source: str  # the manifest file: the lock that defines the split
    split: str
    profile: str  # JSON: films per class, data folder, the per-class limit

    def entity(self):
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.types import ColSpec, DataType, Schema
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        schema = Schema([ColSpec(DataType.string, "file"), ColSpec(DataType.string, "label")])
        meta = MetaDataset(LocalArtifactDatasetSource(self.source), name=self.name, digest=self.digest,
                           schema=schema).to_dict()
        dataset = Dataset(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"],
                          source=meta["source"], schema=meta.get("schema"), profile=self.profile)
        return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, self.split)])


def split_input(prep, split: str, labels: list[str], limit_per_class: int | None) -> SplitInput:
    """One split as a dataset: named after the data folder and split (and the per-class limit, which draws a
    different sample from the same manifest), its profile the films per class."""
    counts = Counter(labels)
    name = f"{prep.root.name}/{split}" + (f" ({limit_per_class} per class)" if limit_per_class else "")
    profile = {"num_films": len(labels), "per_class": {c: counts.get(c, 0) for c in CLASSES},
               "data": str(prep.root), "manifest_hash": prep.manifest.hash, "limit_per_class": limit_per_class}
    return SplitInput(name, prep.manifest.hash, str(prep.manifest_path), split, json.dumps(profile))


def trainval_inputs(prep, limit_per_class: int | None) -> tuple[SplitInput, ...]:
    """Train and val as the trials receive them (the sample drawn with --limit-per-class)."""
    return tuple(split_input(prep, split, [e.label for e in prep.trainval_entries if e.split == split],
                             limit_per_class) for split in ("train", "val"))


def selection_input(films) -> SplitInput:
    """--select-on films (a tune_ct.data.external_set.ExternalSet) as a dataset: digest = their content hash."""
    counts = films.class_counts()
    profile = {"num_films": len(films.entries), "per_class": counts, "data": str(films.root)}
    return SplitInput(f"{films.name} (select-on)", films.content_hash, str(films.root), "select_on", json.dumps(profile))


def log_inputs(client, run_id: str, inputs) -> None:
    client.log_inputs(run_id, datasets=[i.entity() for i in inputs])
