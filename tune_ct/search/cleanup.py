"""What searches leave on disk, and removing what is no longer needed (`python -m tune_ct.clean`).

The work folder holds image caches (one per file list, image size and preprocessing), file lists, manifests and
lung segmenters; the Tune storage holds one folder per search with every trial's kept checkpoints. Caches and
checkpoints only grow by themselves. Removable: caches unused for N days, the oldest caches beyond a size cap,
and the searches whose winner is registered (the registered version carries its own copy of the weights; the
trials' MLflow models then keep their records and figures, and their checkpoint URI names nothing). Never
removed: a manifest (the test-split lock), a file list, a segmenter, a search not yet finished or not registered.
Only local folders are listed and cleaned (a remote --storage is left to its own lifecycle rules).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.data.cache import LAST_USE
from tune_ct.data.workdir import WorkFolder


@dataclass(frozen=True)
class Item:
    kind: str  # cache | search
    path: Path
    size: int  # bytes
    last_use: float  # epoch seconds
    what: str  # e.g. "64px, 1,234 films, equalize=clahe" or "search night1, winner cxr-classifier v3"
    removable_because: str | None = None  # set once a rule says it may go


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def caches(work: WorkFolder) -> list[Item]:
    out = []
    for index in sorted(work.cache.glob("*/index.json")):
        meta = json.loads(index.read_text())
        marker = index.parent / LAST_USE
        used = (marker if marker.exists() else index).stat().st_mtime
        films = (meta.get("per_film") or {}).get("key") or "no per-film preprocessing"
        out.append(Item("cache", index.parent, folder_size(index.parent), used,
                        f"{meta['size']}px, {len(meta['files']):,} films, {films}"))
    return out


def searches(storage: Path, registered: dict[str, str]) -> list[Item]:
    """Search folders under a local Tune storage; `registered`: parent run id -> the version it registered."""
    from tune_ct.train.resume import STATE_FILE

    out = []
    for record in sorted(storage.glob(f"*/{STATE_FILE}")):
        folder, state = record.parent, json.loads(record.read_text())
        version = registered.get(state.get("parent_run_id", ""))
        what = f"search {folder.name}, " + (f"winner registered as {version}" if version else "nothing registered")
        out.append(Item("search", folder, folder_size(folder), max(p.stat().st_mtime for p in folder.iterdir()),
                        what))
    return out


def mark(items: list[Item], older_than_days: float | None, cache_cap: int | None,
         registered_searches: bool) -> list[Item]:
    """The items with removable_because set where a rule applies (the newest caches stay within the cap)."""
    now, out, kept = time.time(), [], 0
    for item in sorted(items, key=lambda i: -i.last_use):
        why = None
        if item.kind == "cache":
            if older_than_days is not None and now - item.last_use > older_than_days * 86400:
                why = f"unused for {(now - item.last_use) / 86400:.0f} days"
            elif cache_cap is not None and kept + item.size > cache_cap:
                why = f"beyond the {cache_cap / 2**30:.1f} GiB cache cap (least recently used)"
            else:
                kept += item.size
        elif registered_searches and "winner registered" in item.what:
            why = "its winner is registered (the version carries its weights)"
        out.append(Item(item.kind, item.path, item.size, item.last_use, item.what, why))
    return out


def remove(items: list[Item]) -> int:
    """Remove the removable items; returns the bytes freed."""
    freed = 0
    for item in items:
        if item.removable_because:
            shutil.rmtree(item.path)
            freed += item.size
    return freed


def registered_searches(tracking_uri: str) -> dict[str, str]:
    """Parent run id -> "NAME vVERSION" of every registered version a search logged."""
    from tune_ct.track.uri import connect

    client = connect(tracking_uri)
    try:
        versions = client.search_model_versions()
    except Exception:  # noqa: BLE001 - a store without a registry: nothing counts as registered
        return {}
    return {v.run_id: f"{v.name} v{v.version}" for v in versions if v.run_id}
