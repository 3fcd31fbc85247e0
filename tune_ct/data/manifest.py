"""The manifest. Every image's pixel hash, duplicate group, origin and split, with a locked test split.

The manifest is a JSON file. Re-running on the same data gives the same split; new images are assigned
without moving any existing test image; a test image that changed or disappeared is reported loudly.
Duplicate groups (pixel-identical, or perceptually near-identical) are assigned to one split as a whole.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from tune_ct.data import near_duplicates
from tune_ct.data.collections import Collection, list_films
from tune_ct.data.files import CLASSES, DataError, RejectedImage, decode_file, pixel_sha, scan

MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
# Hamming distance between 256-bit DCT perceptual hashes (imagehash.phash, hash_size=16) at or under which two
# images are one group. Measured on the shared set (BENCHMARKS.md, "near-duplicate threshold"): JPEG re-encoded,
# resized, brightness- and contrast-shifted copies of 300 real films differ by at most 26 bits (contrast x1.15 is
# the worst; JPEG and brightness stay within 14); pairs from different classes (which cannot be the same film)
# differ by at least 44. The 64-bit hash cannot separate them: chest
# films are so alike at 8x8 that 1,188 cross-class pairs sat within 6 bits.
PHASH_SIZE = 16
NEAR_DUPLICATE_BITS = 28
log = logging.getLogger(__name__)


@dataclass
class Entry:
    file: str  # relative to the dataset root, POSIX separators
    label: str
    sha: str  # sha256 of the decoded pixels and shape: re-encoded copies match
    phash: str  # 256-bit perceptual hash, hex
    size: int
    mtime_ns: int
    conversion: str | None = None
    origin: str = "unknown"
    group: int = -1
    split: str = ""
    collection: str = ""  # "" for the primary collection; else the name of an added one (Manifest.collections)

    @property
    def key(self) -> str:
        """Unique in the manifest: the file, prefixed by its collection's name when it is not the primary's."""
        return f"{self.collection}:{self.file}" if self.collection else self.file


@dataclass
class Manifest:
    data_root: str
    seed: int
    fractions: dict[str, float]
    entries: list[Entry]
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS
    created: str = ""
    updated: str = ""
    # Test images that changed or vanished since the split was locked ({file, reason, sha}). Kept across runs,
    # so every later run still warns: results are not comparable with those from before the change.
    lost_test: list[dict[str, str]] = field(default_factory=list)
    collections: dict[str, str] = field(default_factory=dict)  # added collections: name -> root

    @property
    def hash(self) -> str:
        """Identity of the data a model sees: files, pixels, labels and splits (not timestamps). A manifest of the
        primary collection alone hashes as it did before collections existed."""
        digest = hashlib.sha256()
        for e in sorted(self.entries, key=lambda e: (e.collection, e.file)):
            digest.update(f"{e.key}\0{e.sha}\0{e.label}\0{e.split}\n".encode())
        return digest.hexdigest()[:16]

    def film_path(self, entry: Entry) -> str:
        """What a file list names: the path under the primary root, or an added collection's film's full path
        (the image cache reads data_root / file, which is that path when it is absolute)."""
        return str(Path(self.collections[entry.collection]) / entry.file) if entry.collection else entry.file

    def origins(self) -> list[str]:
        return sorted({e.origin for e in self.entries})

    def in_split(self, *splits: str) -> list[Entry]:
        return [e for e in self.entries if e.split in splits]


@dataclass
class LockReport:
    """What happened to the locked split on this run; test_missing / test_changed are loud warnings."""

    new_files: int = 0
    test_missing: list[str] = field(default_factory=list)
    test_changed: list[str] = field(default_factory=list)
    moved: list[dict[str, str]] = field(default_factory=list)  # {file, from, to}: a group joined a test group


def _pixel_digest(path: Path) -> tuple[str, str, str | None]:
    pixels, conversion = decode_file(path)
    sha = pixel_sha(pixels)
    phash = str(imagehash.phash(Image.fromarray(pixels), hash_size=PHASH_SIZE))
    return sha, phash, conversion


def read_sources(path: Path | None) -> dict[str, str]:
    """file -> origin from a CSV with `file` and `origin` columns (as shared/data/sources.csv)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sources file {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "origin"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"sources file {path} lacks column(s) {', '.join(sorted(missing))}: it needs `file` and `origin`")
        # Normalise Windows separators so a CSV written elsewhere still matches the scan's POSIX paths.
        return {row["file"].strip().replace("\\", "/"): (row["origin"] or "").strip() or "unknown" for row in reader}


def load(path: Path) -> Manifest:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"manifest {path} does not exist: build it with `python -m tune_ct.data --data DIR`") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest {path} is not valid JSON ({exc}); delete it to rebuild (this unlocks the test split)") from exc
    if raw.get("version") != MANIFEST_VERSION:
        raise DataError(f"manifest {path} has version {raw.get('version')}, expected {MANIFEST_VERSION}")
    entries = [Entry(**e) for e in raw.pop("entries")]
    raw.pop("version")
    raw.pop("hash", None)
    raw.pop("counts", None)
    return Manifest(entries=entries, **raw)


def save(manifest: Manifest, path: Path) -> None:
    """Write atomically: a crash leaves the old manifest, never half a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = asdict(manifest)
    body = {"version": MANIFEST_VERSION, "hash": manifest.hash, "counts": split_counts(manifest), **body}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {s: {c: 0 for c in CLASSES} for s in SPLITS}
    for e in manifest.entries:
        counts[e.split][e.label] += 1
    return counts


def near_pairs(phashes: list[str], max_bits: int, chunk: int = 1 << 23) -> list[tuple[int, int]]:
    """All pairs (i < j) whose perceptual hashes differ in at most max_bits bits: every pair compared (exact,
    quadratic; chunk bounds the cells compared at once). group_duplicates scales past this."""
    a, b = near_duplicates.exact_pairs(near_duplicates.hash_rows(phashes), max_bits, block_cells=chunk)
    order = np.lexsort((b, a))
    return list(zip(a[order].tolist(), b[order].tolist()))


def group_duplicates(entries: list[Entry], max_bits: int) -> list[list[int]]:
    """Connected components of 'same pixels' or 'near-identical perceptual hash'; singletons included.

    Exact up to near_duplicates.EXACT_MAX films; above, seeded LSH with every link verified finds each pair at
    the threshold with probability >= 0.995 (closer pairs more often) and never joins films without a real
    chain of near pairs or equal shas (tune_ct/data/near_duplicates.py)."""
    rows = near_duplicates.hash_rows([e.phash for e in entries])
    return near_duplicates.groups_of(near_duplicates.group_labels(rows, [e.sha for e in entries], max_bits))


def _seeded_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def assign_splits(entries: list[Entry], groups: list[list[int]], previous: dict[str, Entry], seed: int,
                  fractions: dict[str, float], report: LockReport) -> None:
    """Give every group one split. Locked files keep theirs; a group touching the test split goes to test."""
    new_groups: list[list[int]] = []
    for g in groups:
        before = {previous[entries[i].key].split for i in g if entries[i].key in previous}
        if not before:
            new_groups.append(g)
            continue
        split = "test" if "test" in before else "val" if "val" in before else "train"
        for i in g:
            old = previous.get(entries[i].key)
            if old is not None and old.split != split:
                report.moved.append({"file": entries[i].key, "from": old.split, "to": split})
            entries[i].split = split

    # Stratify new groups by (class, origin) so every split sees every source of every class.
    def stratum(g: list[int]) -> tuple[str, str]:
        return Counter((entries[i].label, entries[i].origin) for i in g).most_common(1)[0][0]

    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for e in entries:
        totals[(e.label, e.origin)] += 1
        if e.split:
            counts[(e.label, e.origin)][e.split] += 1
    # Large groups first so they cannot unbalance a split at the end; then a seeded, order-free shuffle.
    new_groups.sort(key=lambda g: (-len(g), _seeded_key(seed, min(entries[i].sha for i in g))))
    for g in new_groups:
        key = stratum(g)
        have = counts[key]
        deficit = {s: fractions[s] * totals[key] - have[s] for s in ("test", "val", "train")}
        split = max(deficit, key=lambda s: deficit[s])  # ties resolve to test, then val
        for i in g:
            entries[i].split = split
        have[split] += len(g)


@dataclass
class BuildOptions:
    """How a new manifest splits its data (a locked manifest keeps the seed and fractions it was made with)."""

    sources: Path | None = None
    seed: int = 0
    fractions: dict[str, float] | None = None
    near_bits: int = NEAR_DUPLICATE_BITS
    workers: int | None = None
    more: tuple[Collection, ...] = ()  # collections added to the primary one
    # A new manifest with added collections takes its lock from the primary's own manifest, so adding a
    # collection keeps every primary film's split.
    lock_from: Path | None = None


def build(root: Path, manifest_path: Path, options: BuildOptions | None = None) -> tuple[Manifest, LockReport]:
    """Scan root, hash every image (re-using hashes of unchanged files), group duplicates, assign splits.

    Holds an exclusive lock on the manifest while it works: two searches started at once on one node
    update it one after the other, and the second sees the first one's locked split."""
    manifest_path = Path(manifest_path)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest_path.with_name(manifest_path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(Path(root), manifest_path, options or BuildOptions())


def _previous(manifest_path: Path, options: BuildOptions) -> Manifest | None:
    if manifest_path.exists():
        return load(manifest_path)
    if options.lock_from is not None and Path(options.lock_from).exists():
        return load(options.lock_from)
    return None


@dataclass
class _Found:
    entries: list[Entry]
    rejected: list[dict[str, str]]
    ignored: list[str]


def _read_all(root: Path, options: BuildOptions, previous: dict[str, Entry]) -> _Found:
    """Every usable film of the primary collection and of each added one, with what was rejected or ignored."""
    found = scan(root, require_all=not options.more)
    entries, rejected = _hash_entries(root, found.images, previous, read_sources(options.sources), options.workers)
    result = _Found(entries, rejected, list(found.ignored))
    for c in options.more:
        if Path(c.root) == Path(root):
            raise DataError(f"--data: collection {c.name} is the primary folder {root} again")
        listed = list_films(c, read_sources(c.sources))
        more, rejected = _hash_entries(c.root, listed.images, previous, listed.origins, options.workers, c.name)
        result.entries += more
        result.rejected += [{**r, "file": f"{c.name}:{r['file']}"} for r in rejected]
        result.ignored += [f"{c.name}:{i}" for i in listed.ignored]
    return result


def _build(root: Path, manifest_path: Path, options: BuildOptions) -> tuple[Manifest, LockReport]:
    fractions = dict(options.fractions or DEFAULT_FRACTIONS)
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or set(fractions) != set(SPLITS):
        raise DataError(f"split fractions {fractions} must give train, val and test summing to 1")
    previous_manifest = _previous(manifest_path, options)
    previous = {e.key: e for e in previous_manifest.entries} if previous_manifest else {}
    seed = options.seed
    if previous_manifest is not None:
        seed, fractions = previous_manifest.seed, previous_manifest.fractions  # the lock includes its recipe

    report = LockReport()
    found = _read_all(root, options, previous)
    entries = found.entries
    report.new_files = sum(1 for e in entries if e.key not in previous)
    kept = {c.name: c for c in options.more}

    def left_out(e: Entry) -> bool:  # a film of a named collection whose origin the data file no longer keeps
        return e.collection in kept and not kept[e.collection].keeps(e.origin)

    lost = _lost_test(previous_manifest, previous, {e.key: e for e in entries}, report, left_out)
    if not entries:
        raise DataError(f"no readable images in {root}: all {len(found.rejected)} candidate files were rejected")
    empty = [c for c in CLASSES if not any(e.label == c for e in entries)]
    if empty:
        where = f"{root} or the collections added to it" if options.more else str(root)
        raise DataError(f"no readable images for class(es) {', '.join(empty)} in {where}")

    entries.sort(key=lambda e: (e.collection, e.file))
    groups = group_duplicates(entries, options.near_bits)  # across collections: a film in two is one group
    for gid, members in enumerate(groups):
        for i in members:
            entries[i].group = gid
    assign_splits(entries, groups, previous, seed, fractions, report)

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest = Manifest(
        data_root=str(root), seed=seed, fractions=fractions, entries=entries, rejected=found.rejected,
        ignored=found.ignored, near_duplicate_bits=options.near_bits,
        created=previous_manifest.created if previous_manifest else now, updated=now, lost_test=lost,
        collections={c.name: str(c.root) for c in options.more},
    )
    save(manifest, manifest_path)
    if lost:
        _warn_lost_test(manifest, report, root, manifest_path)
    return manifest, report


# Progress bars: None shows them when stderr is a terminal; a command may ask for them always (True) or never.
_PROGRESS: list[bool | None] = [None]


def show_progress(enabled: bool | None) -> None:
    """Whether the data stage draws progress bars (hashing films, building caches) on stderr; None: when stderr
    is a terminal. A command calls this once; library code never prints otherwise."""
    _PROGRESS[0] = enabled


def progress_bar(iterable, total: int, desc: str):
    """`iterable`, with a tqdm bar on stderr while it is consumed (when shown, and for more than a handful)."""
    import sys

    from tqdm import tqdm

    shown = _PROGRESS[0] if _PROGRESS[0] is not None else sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit="film", file=sys.stderr, disable=not shown or total < 2,
                leave=False, mininterval=0.5, dynamic_ncols=True)


def _hash_entries(root: Path, images: list[tuple[str, str]], previous: dict[str, Entry], origins: dict[str, str],
                  workers: int | None, collection: str = "") -> tuple[list[Entry], list[dict[str, str]]]:
    """An Entry per readable image (unchanged files keep their hashes) and a reason per rejected file."""
    entries: list[Entry] = []
    rejected: list[dict[str, str]] = []
    todo: list[tuple[str, str, os.stat_result]] = []
    for rel, label in images:
        try:
            st = (root / rel).stat()
        except OSError as exc:  # a dangling symlink, or a file removed while we scan
            rejected.append({"file": rel, "reason": f"cannot read file: {exc.strerror}"})
            continue
        old = previous.get(f"{collection}:{rel}" if collection else rel)
        if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns and old.label == label:
            entries.append(Entry(**{**asdict(old), "origin": origins.get(rel, old.origin), "group": -1, "split": ""}))
        else:
            todo.append((rel, label, st))

    def digest(item):
        rel, label, st = item
        try:
            sha, phash, conversion = _pixel_digest(root / rel)
        except RejectedImage as exc:
            return None, {"file": rel, "reason": str(exc)}
        except OSError as exc:
            return None, {"file": rel, "reason": f"cannot read file: {exc}"}
        return Entry(rel, label, sha, phash, st.st_size, st.st_mtime_ns, conversion, origins.get(rel, "unknown"),
                     collection=collection), None

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for entry, reject in progress_bar(pool.map(digest, todo, chunksize=64), len(todo), "hashing films"):
            if entry is not None:
                entries.append(entry)
            else:
                rejected.append(reject)
    if todo:
        log.info("hashed %d image(s) in %.1fs (%d usable in total)", len(todo), time.monotonic() - started,
                 len(entries))
    return entries, rejected


def _warn_lost_test(manifest: Manifest, report: LockReport, root: Path, manifest_path: Path) -> None:
    lost = manifest.lost_test
    log.warning(
        f"WARNING: the locked test split (locked {manifest.created}) changed under {root}: "
        f"{sum(x['reason'] == 'missing' for x in lost)} test image(s) disappeared and "
        f"{sum(x['reason'] == 'changed' for x in lost)} changed content ({len(report.test_missing)} and "
        f"{len(report.test_changed)} on this run). Test results are not comparable with runs from before the "
        f"change; see `lost_test` in {manifest_path}. Files: "
        + ", ".join(f"{x['file']} ({x['reason']})" for x in lost[:10]) + (" ..." if len(lost) > 10 else "")
    )


def _lost_test(previous_manifest: Manifest | None, previous: dict[str, Entry], present: dict[str, Entry],
               report: LockReport, left_out=lambda e: False) -> list[dict[str, str]]:
    """Fill report.test_missing/test_changed for this run; return the cumulative list kept in the manifest. A film
    the data file now leaves out (its collection keeps other origins) is not lost: it is not asked for."""
    lost = {x["file"]: x for x in (previous_manifest.lost_test if previous_manifest else [])}
    for file, old in previous.items():
        if old.split != "test" or (file not in present and left_out(old)):
            continue
        if file not in present:
            report.test_missing.append(file)
            lost.setdefault(file, {"file": file, "reason": "missing", "sha": old.sha})
        elif present[file].sha != old.sha:
            report.test_changed.append(file)
            lost[file] = {"file": file, "reason": "changed", "sha": lost.get(file, {}).get("sha", old.sha)}
    # A file that came back with its locked pixels is whole again.
    return [x for f, x in sorted(lost.items()) if not (f in present and present[f].sha == x["sha"])]


def exact_duplicate_sets(manifest: Manifest) -> list[list[Entry]]:
    """Sets of files with identical decoded pixels (a subset of some duplicate group each)."""
    by_sha: dict[str, list[Entry]] = defaultdict(list)
    for e in manifest.entries:
        by_sha[e.sha].append(e)
    return sorted((g for g in by_sha.values() if len(g) > 1), key=lambda g: g[0].file)


def duplicate_groups(manifest: Manifest) -> list[list[Entry]]:
    by_group: dict[int, list[Entry]] = defaultdict(list)
    for e in manifest.entries:
        by_group[e.group].append(e)
    return [g for _, g in sorted(by_group.items()) if len(g) > 1]


def limit_per_class(entries: list[Entry], per_class: int, seed: int) -> list[Entry]:
    """A deterministic sample of per_class images per class for smoke runs. It draws from each locked split in
    proportion, so a sample never moves an image across splits and every split keeps every class."""
    chosen: list[Entry] = []
    for label in CLASSES:
        of_class = [e for e in entries if e.label == label]
        by_split = {s: sorted((e for e in of_class if e.split == s), key=lambda e: _seeded_key(seed, e.sha + e.file))
                    for s in SPLITS}
        total = len(of_class)
        if total == 0:
            continue
        take = {s: max(1 if by_split[s] else 0, round(per_class * len(by_split[s]) / total)) for s in SPLITS}
        for s in SPLITS:
            chosen.extend(by_split[s][: take[s]])
    return sorted(chosen, key=lambda e: e.file)


def origin_map(manifest: Manifest, sources: Path | None = None) -> dict[str, str]:
    """file list path -> origin for every film whose origin is known: the manifest's, overridden by a sources
    CSV (of the primary collection)."""
    origins = {manifest.film_path(e): e.origin for e in manifest.entries if e.origin != "unknown"}
    origins.update(read_sources(sources))
    return origins
