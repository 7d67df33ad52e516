"""Search curves as PNG (matplotlib Agg backend, atomic writes): reward and MACs per round."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from collabprune.io import atomic_path


def _finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def plot_search(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str],
                uniform: dict[str, Any] | None = None) -> list[Path]:
    """Write ``reward.png`` (reward per round and best so far) and ``macs.png`` (G and D MACs fraction).

    :param records: search-round records of the evaluation log, in round order.
    :param out_dir: folder for the PNG files (created).
    :param uniform: the uniform candidate's record, drawn as a reference line when given.
    :returns: the written files.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rounds = [r["round"] for r in records]
    rewards = [_finite(r.get("reward")) for r in records]
    best, run = [], -math.inf
    start = _finite(uniform.get("reward")) if uniform else math.nan
    if math.isfinite(start):
        run = start
    for v in rewards:
        if math.isfinite(v):
            run = max(run, v)
        best.append(run if math.isfinite(run) else math.nan)

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, rewards, "o-", ms=3, lw=1, label="reward of the round")
    ax.plot(rounds, best, "-", lw=2, label="best so far")
    if math.isfinite(start):
        ax.axhline(start, color="gray", ls="--", lw=1, label="uniform")
    ax.set_xlabel("round")
    ax.set_ylabel("team reward")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out / "reward.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("g_macs_fraction", "G"), ("d_macs_fraction", "D")):
        ys = [_finite(r.get("metrics", {}).get(key)) for r in records]
        ax.plot(rounds, ys, "o-", ms=3, lw=1, label=f"{label} MACs / teacher")
    ax.set_xlabel("round")
    ax.set_ylabel("MACs fraction")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out / "macs.png"))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def plot_ratio_heatmap(records: Sequence[dict[str, Any]], role: str, group_names: Sequence[str],
                       path: str | os.PathLike[str]) -> Path:
    """Write a group-by-round heat map of one agent's keep ratios.

    :param records: search-round records in round order (``g_ratios`` / ``d_ratios`` are read).
    :param role: ``generator`` or ``discriminator``.
    :param group_names: the role's prunable group names (network order), for the y axis.
    :param path: the PNG file.
    :returns: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    key = f"{role[0]}_ratios"
    grid = np.full((len(group_names), max(1, len(records))), np.nan)
    for j, record in enumerate(records):
        ratios = record.get(key) or []
        grid[: len(ratios), j] = ratios
    fig, ax = plt.subplots(figsize=(max(5.0, 0.18 * grid.shape[1] + 3), 0.32 * len(group_names) + 1.6))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest",
                      extent=(-0.5, grid.shape[1] - 0.5, len(group_names) - 0.5, -0.5))
    ax.set_yticks(range(len(group_names)))
    ax.set_yticklabels([f"{i}: {n if len(n) <= 28 else '...' + n[-25:]}" for i, n in enumerate(group_names)], fontsize=7)
    ax.set_xlabel("round")
    ax.set_title(f"{role} keep ratio per prunable group")
    fig.colorbar(image, ax=ax, label="keep ratio")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
