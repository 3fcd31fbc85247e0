"""`python -m tune_ct.clean` on a real work folder and Tune storage (a copy of the shared search's): it lists
caches and searches, removes only what its rules allow, and never a manifest, a file list or a search whose
winner is not registered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from tune_ct.data.cache import LAST_USE


def clean(tmp_path, search, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tune_ct.clean", "--workdir", str(tmp_path / "work"), "--storage",
                           str(tmp_path / "storage"), "--tracking-uri", search.tracking_uri, *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_clean_lists_then_removes_old_caches_and_registered_searches_only(tiny_search, tmp_path):
    summary = json.loads(tiny_search.summary_file.read_text())
    shutil.copytree(summary["workdir"], tmp_path / "work")
    shutil.copytree(summary["storage"], tmp_path / "storage")
    unfinished = tmp_path / "storage" / "unfinished"  # a search whose parent run registered nothing
    shutil.copytree(tmp_path / "storage" / tiny_search.name, unfinished)
    record = unfinished / "tune_ct_search.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "parent_run_id": "not-a-registered-search"}))
    cache_folders = sorted(p.parent for p in (tmp_path / "work" / "cache").glob("*/index.json"))
    assert len(cache_folders) >= 1
    old = time.time() - 40 * 86400
    os.utime(cache_folders[0] / LAST_USE, (old, old))  # unused for 40 days

    listed = clean(tmp_path, tiny_search, "--older-than", "30", "--registered-searches")
    assert f"{cache_folders[0].name}: " in listed.stdout and "unused for 40 days" in listed.stdout
    assert f"winner registered as {tiny_search.register_name} v{summary['registered_version']}" in listed.stdout
    assert "may be removed: pass --yes" in listed.stdout and cache_folders[0].exists()  # listing removes nothing

    clean(tmp_path, tiny_search, "--older-than", "30", "--registered-searches", "--yes")
    assert not cache_folders[0].exists() and all(p.exists() for p in cache_folders[1:])
    assert not (tmp_path / "storage" / tiny_search.name).exists() and unfinished.exists()
    assert list((tmp_path / "work" / "manifests").glob("*.manifest.json"))  # the test-split lock stays
    assert list((tmp_path / "work" / "subsets").glob("*.json"))
