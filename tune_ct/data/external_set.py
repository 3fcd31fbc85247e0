"""External validation sets: films from another hospital, with any subset of the four classes.

Three ways to hand them over: the Kaggle layout (``<class>/images/*``), plain class folders (``<class>/*.png``,
``.jpg``, ``.dcm``; folder names matched ignoring case and separators: ``covid``, ``viral_pneumonia``), or any
folder with a labels CSV (``file,label[,origin]``). Every film is decoded here once for its pixel hash: the set's
content hash then identifies it whatever its folder or files are called (so a set a search selected on is
recognised), and the image cache checks each film against that hash before scoring it. Unreadable films are
counted and listed with their reason, every other file is listed as ignored with why: nothing is dropped unseen.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tune_ct.data.files import CLASSES, IMAGE_EXTENSIONS, DataError, RejectedImage, class_for_folder, decode_file, \
    pixel_sha, walk_files

EXTERNAL_SPLIT = "external"
# The name goes into MLflow tag keys (tune_ct.external.<name>.macro_f1) and gates files: keep it plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
LAYOUTS = ("<class>/images/*.png (the Kaggle layout)", "<class>/*.png|jpg|jpeg|dcm",
           "any folder with --labels CSV (columns file,label[,origin])")
log = logging.getLogger(__name__)


@dataclass
class ExternalEntry:
    file: str  # relative to the set's root (POSIX separators), or absolute for a CSV row outside it
    label: str
    sha: str  # files.pixel_sha of the decoded pixels
    origin: str = "unknown"
    split: str = EXTERNAL_SPLIT


@dataclass
class Skipped:
    file: str
    reason: str


@dataclass
class ExternalSet:
    name: str
    root: Path
    entries: list[ExternalEntry]
    unreadable: list[Skipped] = field(default_factory=list)  # films that could not be decoded, with the reason
    ignored: list[Skipped] = field(default_factory=list)  # files that are not films of a class, with why
    labels_csv: Path | None = None

    @property
    def classes_present(self) -> list[str]:
        found = {e.label for e in self.entries}
        return [c for c in CLASSES if c in found]

    @property
    def content_hash(self) -> str:
        """The films and their labels, not their names: the same set copied or renamed keeps its hash."""
        digest = hashlib.sha256()
        for sha, label in sorted((e.sha, e.label) for e in self.entries):
            digest.update(f"{sha}\0{label}\n".encode())
        return digest.hexdigest()[:16]

    def class_counts(self) -> dict[str, int]:
        return {c: sum(1 for e in self.entries if e.label == c) for c in self.classes_present}

    def origins(self) -> dict[str, str]:
        return {e.file: e.origin for e in self.entries if e.origin != "unknown"}

    def one_class_origins(self) -> dict[str, str] | None:
        """{origin: its one class} when the set's classes come each from other origins (origin tells the class),
        else None. Selecting on such a set rewards a model that tells the collections apart: chosen on two
        single-class origins, levers did not carry to other hospitals (BENCHMARKS.md, the external protocol)."""
        held: dict[str, set[str]] = {}
        for e in self.entries:
            held.setdefault(e.origin, set()).add(e.label)
        if "unknown" in held or len(self.classes_present) < 2 or any(len(c) > 1 for c in held.values()):
            return None
        return {origin: next(iter(classes)) for origin, classes in sorted(held.items())}


def check_name(name: str, from_folder: bool = False) -> str:
    if not NAME_PATTERN.fullmatch(name):
        what = f"the folder name {name!r}" if from_folder else f"external set name {name!r}"
        raise DataError(f"{what} cannot name an external set (it goes into MLflow tag keys and gates files): use "
                        "letters, digits, '_' and '-', at most 64 characters; pass --name NAME")
    return name


def _place(parts: tuple[str, ...], name: str, classes: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """(class, None) for a film of a class folder (`classes` maps other folder names), else (None, why not)."""
    if name.startswith("."):
        return None, "hidden file"  # .DS_Store, macOS '._x.png' resource forks
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return None, f"not an image file (extension {suffix or 'none'!r})"
    if not parts:
        return None, "not inside a class folder"
    label = (classes or {}).get(parts[0]) or class_for_folder(parts[0])
    if label is None:
        return None, f"folder {parts[0]!r} is not one of the classes {', '.join(CLASSES)}"
    if len(parts) == 1 or (len(parts) == 2 and parts[1].lower() == "images"):
        return label, None
    return None, f"in sub-folder {'/'.join(parts[1:])!r} (only <class>/ and <class>/images/ are read)"


def from_folders(root: Path, classes: dict[str, str] | None = None) -> tuple[list[tuple[str, str, str]], list[Skipped]]:
    """(file, class, origin "unknown") of every film in a class folder, and every other file with why not."""
    candidates, ignored = [], []
    for parts, name in walk_files(root):
        rel = "/".join((*parts, name))
        label, why = _place(parts, name, classes)
        if label:
            candidates.append((rel, label, "unknown"))
        else:
            ignored.append(Skipped(rel, why))
    return candidates, ignored


def _csv_rows(path: Path):
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist; pass a CSV with columns file,label[,origin]")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"labels file {path} lacks column(s) {', '.join(sorted(missing))}: it needs file,label "
                            f"and optionally origin (found {', '.join(reader.fieldnames or []) or 'no header'})")
        for row_number, row in enumerate(reader, start=1):
            yield row_number, reader.line_num, row


def from_labels(path: Path, root: Path) -> tuple[list[tuple[str, str, str]], list[Skipped]]:
    """The rows of a labels CSV; a file listed twice is ignored the second time (a conflicting label stops)."""
    seen: dict[str, tuple[str, int]] = {}
    candidates, ignored = [], []
    for row_number, line, row in _csv_rows(path):
        where = f"labels file {path}, row {row_number} (line {line})"
        file = (row.get("file") or "").strip().replace("\\", "/")
        raw = (row.get("label") or "").strip()
        label = class_for_folder(raw)
        if not file:
            raise DataError(f"{where}: empty file column; give the film's path relative to {root} or absolute")
        if label is None:
            raise DataError(f"{where}: unknown label {raw!r} for {file}; expected one of {', '.join(CLASSES)} "
                            "(case, spaces, '_' and '-' are ignored)")
        file = file if posixpath.isabs(file) else posixpath.normpath(file)
        if file in seen:
            if seen[file][0] != label:
                raise DataError(f"{where}: {file} is labelled {label} here but {seen[file][0]} on row "
                                f"{seen[file][1]}; one film has one label")
            ignored.append(Skipped(file, f"listed again on row {row_number} of {path.name}"))
            continue
        seen[file] = (label, row_number)
        candidates.append((file, label, (row.get("origin") or "").strip() or "unknown"))
    return candidates, ignored + _unlisted(root, path, {os.path.normpath(root / f) for f in seen})


def _unlisted(root: Path, labels: Path, listed: set[str]) -> list[Skipped]:
    """Files in the folder that the labels CSV does not name: listed, so a film left out of the CSV is seen."""
    out = []
    for parts, name in walk_files(root):
        path = os.path.normpath(root.joinpath(*parts, name))
        if path not in listed and path != os.path.normpath(labels.resolve()):
            out.append(Skipped("/".join((*parts, name)), f"not listed in {labels.name}"))
    return out


def _read(path: Path) -> tuple[str | None, str | None]:
    """(pixel sha, None), or (None, why the film cannot be used)."""
    try:
        pixels, _ = decode_file(path)
    except RejectedImage as exc:
        return None, str(exc)
    except OSError as exc:  # missing (a CSV row), unreadable permissions, a folder named like a film
        return None, f"cannot read: {exc.strerror or exc}"
    return pixel_sha(pixels), None


def _decode_all(root: Path, candidates: list[tuple[str, str, str]]) -> tuple[list[ExternalEntry], list[Skipped]]:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        read = list(pool.map(lambda c: _read(root / c[0]), candidates))
    entries, unreadable = [], []
    for (file, label, origin), (sha, why) in zip(candidates, read):
        if sha is None:
            unreadable.append(Skipped(file, why))
        else:
            entries.append(ExternalEntry(file, label, sha, origin))
    return entries, unreadable


def load_external(folder, labels_csv=None, name: str | None = None) -> ExternalSet:
    """Every readable film of an external set, labelled by its class folder or by the labels CSV."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"external set folder {root} does not exist or is not a folder (from --external)")
    name = check_name(name, from_folder=False) if name else check_name(root.name, from_folder=True)
    labels = Path(labels_csv).expanduser().resolve() if labels_csv else None
    candidates, ignored = from_labels(labels, root) if labels else from_folders(root)
    entries, unreadable = _decode_all(root, candidates)
    if not entries:
        found = (f"{len(candidates)} film(s) listed, all unreadable (first: {unreadable[0].file}: "
                 f"{unreadable[0].reason})" if unreadable else f"{len(ignored)} other file(s) ignored")
        raise DataError(f"no readable film in external set {root} ({found}): expected one of "
                        + "; ".join(LAYOUTS) + ". Class folder names are matched ignoring case and separators "
                        "(covid, lung_opacity, normal, viral_pneumonia)")
    ext = ExternalSet(name, root, entries, unreadable, ignored, labels)
    log.info("external set %s: %d films (%s), %d unreadable, %d ignored, content hash %s", name, len(entries),
             ", ".join(f"{c} {n}" for c, n in ext.class_counts().items()), len(unreadable), len(ignored),
             ext.content_hash)
    return ext
