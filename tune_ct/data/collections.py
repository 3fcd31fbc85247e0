"""Dataset collections: the folders one manifest is built over, each from its own hospital or archive.

`--data` names the first (primary) collection: a Kaggle-layout folder whose films keep their paths, manifest
file and locked split whatever is added later. Further `--data` values add collections; each may hold any subset
of the four classes, in any layout `evaluate --external` reads (`<class>/images/*`, `<class>/*`, or a labels CSV
with file,label[,origin]). A value is a folder (`DIR` or `NAME=DIR`) or a YAML file listing collections:

    collections:
      - root: ../shared/data/COVID-19_Radiography_Dataset
        sources: ../shared/data/sources.csv   # file,origin
      - name: ext
        root: ../shared/data/external_dev
        labels: ../shared/data/external_dev/labels.csv   # file,label[,origin]
        origins: [openist, hannover-mhh]      # keep only these origins of it (default: all)
        classes: {healthy: Normal}            # folder -> class, for folders not named after a class

Paths in the file are relative to it. A film's origin is its sources/labels CSV's, else the collection's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tune_ct.data.files import CLASSES, DataError, class_for_folder

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
KEYS = {"root", "name", "labels", "sources", "origins", "classes"}


@dataclass(frozen=True)
class Collection:
    root: Path
    name: str
    labels: Path | None = None  # file,label[,origin] CSV: labels (and origins) instead of class folders
    sources: Path | None = None  # file,origin CSV
    origins: tuple[str, ...] = ()  # keep only films of these origins; empty: all
    classes: dict[str, str] = field(default_factory=dict)  # folder name -> class

    def keeps(self, origin: str) -> bool:
        return not self.origins or origin in self.origins

    def as_dict(self) -> dict:
        return {"root": str(self.root), "name": self.name, "labels": str(self.labels) if self.labels else None,
                "sources": str(self.sources) if self.sources else None, "origins": list(self.origins),
                "classes": dict(self.classes)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Collection":
        return cls(Path(raw["root"]), raw["name"], Path(raw["labels"]) if raw.get("labels") else None,
                   Path(raw["sources"]) if raw.get("sources") else None, tuple(raw.get("origins") or ()),
                   dict(raw.get("classes") or {}))


def data_spec(more: tuple[Collection, ...], held_out: tuple[str, ...]) -> str | None:
    """The added collections and held-out origins a model was trained with, as JSON (a registered version's
    tag), so `evaluate` and `promote` rebuild the same manifest and locked test split; None for the primary alone."""
    import json

    if not more and not held_out:
        return None
    return json.dumps({"collections": [c.as_dict() for c in more], "held_out": list(held_out)})


def read_data_spec(text: str | None) -> tuple[tuple[Collection, ...], tuple[str, ...]]:
    import json

    if not text:
        return (), ()
    raw = json.loads(text)
    return tuple(Collection.from_dict(c) for c in raw.get("collections", [])), tuple(raw.get("held_out", []))


def _checked_root(value: str | Path, where: str) -> Path:
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{where}: dataset folder {root} does not exist or is not a folder")
    return root


def _checked_name(name: str, where: str) -> str:
    if not NAME.fullmatch(name):
        raise DataError(f"{where}: collection name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    return name


def _class_map(raw, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: classes must map folder names to classes, e.g. {{healthy: Normal}}")
    out = {}
    for folder, label in raw.items():
        cls = class_for_folder(str(label))
        if cls is None:
            raise DataError(f"{where}: classes.{folder}: {label!r} is not one of {', '.join(CLASSES)}")
        out[str(folder)] = cls
    return out


def _from_mapping(item, base: Path, where: str) -> Collection:
    if not isinstance(item, dict) or "root" not in item:
        raise DataError(f"{where}: each collection needs at least `root: FOLDER`")
    unknown = set(item) - KEYS
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}")

    def path(key: str) -> Path | None:
        return (base / str(item[key])).expanduser().resolve() if item.get(key) else None

    root = _checked_root(path("root"), where)
    for key in ("labels", "sources"):
        if path(key) and not path(key).is_file():
            raise DataError(f"{where}: {key} file {path(key)} does not exist")
    origins = item.get("origins") or []
    if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
        raise DataError(f"{where}: origins must be a list of origin names, e.g. [openist]")
    return Collection(root, _checked_name(str(item.get("name") or root.name), where), path("labels"),
                      path("sources"), tuple(origins), _class_map(item.get("classes") or {}, where))


def read_collections_file(path: Path) -> list[Collection]:
    import yaml

    where = f"data file {path}"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{where} cannot be read: {exc}") from exc
    items = raw.get("collections") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: expected `collections:` with a list of folders (see tune_ct/data/collections.py)")
    return [_from_mapping(item, path.parent, f"{where}, collection {i + 1}") for i, item in enumerate(items)]


def parse_data_values(values: list[str], sources: Path | None) -> list[Collection]:
    """The collections named by --data values (first = primary); --sources applies to the primary."""
    found: list[Collection] = []
    for value in values:
        if value.endswith((".yaml", ".yml")) and Path(value).is_file():
            found.extend(read_collections_file(Path(value).resolve()))
            continue
        name, _, folder = value.rpartition("=") if "=" in value and not Path(value).is_dir() else ("", "", value)
        root = _checked_root(folder, f"--data {value}")
        found.append(Collection(root, _checked_name(name or root.name, f"--data {value}")))
    if found and sources and found[0].sources is None:
        found[0] = Collection(found[0].root, found[0].name, found[0].labels, sources, found[0].origins,
                              found[0].classes)
    names = [c.name for c in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"--data: collection name(s) {', '.join(twice)} used twice; name them (NAME=DIR)")
    return found


@dataclass
class Listed:
    """An added collection's films: (path relative to its root, class), origins its labels CSV gives, and every
    other file with why it is not a film of the collection."""

    images: list[tuple[str, str]]
    origins: dict[str, str]
    ignored: list[str]


def list_films(collection: Collection, sources: dict[str, str]) -> Listed:
    """The films of an added collection in any layout external sets may have, keeping only its `origins`."""
    from tune_ct.data.external_set import from_folders, from_labels

    if collection.labels:
        candidates, skipped = from_labels(collection.labels, collection.root)
    else:
        candidates, skipped = from_folders(collection.root, collection.classes)
    listed = Listed([], {}, [f"{s.file} ({s.reason})" for s in skipped])
    for file, label, origin in candidates:
        origin = sources.get(file) or (origin if origin != "unknown" else collection.name)
        if not collection.keeps(origin):
            listed.ignored.append(f"{file} (origin {origin} not in the collection's origins)")
            continue
        listed.images.append((file, label))
        listed.origins[file] = origin
    if not listed.images:
        raise DataError(f"collection {collection.name} ({collection.root}) holds no film to use: "
                        f"{len(listed.ignored)} file(s) ignored, e.g. {'; '.join(listed.ignored[:3]) or 'none'}")
    return listed
