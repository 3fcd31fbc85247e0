"""Live processes by what their command line names (read from /proc): how a test finds the Ray processes of the
cluster it started (its own temp folder or port) and proves none is left."""

from __future__ import annotations

from pathlib import Path


def command_lines() -> dict[int, str]:
    """pid -> command line of every live process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass  # it exited meanwhile
    return out


def naming(text: str) -> list[str]:
    """The command lines (shortened) of live processes that name `text`, e.g. a cluster's own temp folder."""
    return [cmd[:200] for cmd in command_lines().values() if text in cmd]
