"""matplotlib set up once (no display), and the figures every stage logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tune_ct.data.files import CLASSES


def pyplot():
    """matplotlib.pyplot on the Agg backend: searches run on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write and close a matplotlib figure (closing frees it: searches draw many)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_confusion_matrix(matrix, path: Path, title: str) -> Path:
    """Counts with row-normalised shading, so small classes are as visible as large ones."""
    plt = pyplot()
    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASSES)), [c.replace(" ", "\n") for c in CLASSES], fontsize=8)
    ax.set_yticks(range(len(CLASSES)), [c.replace(" ", "\n") for c in CLASSES], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_pareto_front(points: list[dict], front: list[dict], objectives: list[str], path: Path, title: str,
                      limits: dict[str, float] | None = None) -> Path:
    """Every trial (grey) and the Pareto front (joined, the picked member starred) on the first two objectives:
    the first (a val metric) up, the second (a cost) across, the pick rule's limits dashed. Points are dicts
    holding the objective values."""
    plt = pyplot()
    y_name, x_name = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=100)
    ax.scatter([p[x_name] for p in points], [p[y_name] for p in points], c="0.7", s=22, label="trials")
    line = sorted(front, key=lambda p: p[x_name])
    ax.plot([p[x_name] for p in line], [p[y_name] for p in line], "-o", c="tab:blue", ms=5, label="Pareto front")
    for p in front:
        ax.annotate(f"{p.get('backbone', '')} {p.get('image_size', '')}px", (p[x_name], p[y_name]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    for p in (p for p in front if p.get("picked")):
        ax.scatter([p[x_name]], [p[y_name]], marker="*", s=220, c="tab:red", zorder=3, label="picked (registered)")
    for name, bound in (limits or {}).items():
        if name in (x_name, y_name):
            (ax.axvline if name == x_name else ax.axhline)(bound, ls="--", c="tab:red", lw=1, label=f"limit {name}")
    ax.set_xlabel(x_name)
    ax.set_ylabel(f"{y_name} (val split)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
