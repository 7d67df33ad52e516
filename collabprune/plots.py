"""Search curves as PNG (matplotlib Agg backend, atomic writes): reward and MACs per round."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from collabprune.io import atomic_path
from collabprune.records import EvaluationRecord


def _finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def plot_search(records: Sequence[EvaluationRecord], out_dir: str | os.PathLike[str],
                uniform: EvaluationRecord | None = None) -> list[Path]:
    """Write ``reward.png`` (every candidate's reward by round, the round mean, the best so far) and
    ``macs.png`` (G and D MACs fraction of every candidate).

    :param records: search records of the evaluation log, in (round, slot) order.
    :param out_dir: folder for the PNG files (created).
    :param uniform: the uniform candidate's record, drawn as a reference line when given.
    :returns: the written files.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rounds = [r.round for r in records]
    rewards = [_finite(r.reward) for r in records]
    by_round: dict[int, list[float]] = {}
    for k, v in zip(rounds, rewards):
        if math.isfinite(v):
            by_round.setdefault(k, []).append(v)
    order = sorted(by_round)
    best, run = [], -math.inf
    start = _finite(uniform.reward) if uniform else math.nan
    if math.isfinite(start):
        run = start
    for k in order:
        run = max(run, max(by_round[k]))
        best.append(run)

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, rewards, "o", ms=3, alpha=0.5, label="candidate")
    ax.plot(order, [sum(by_round[k]) / len(by_round[k]) for k in order], "-", lw=1, label="round mean")
    ax.plot(order, best, "-", lw=2, label="best so far (search reward)")
    if math.isfinite(start):
        ax.axhline(start, color="gray", ls="--", lw=1, label="uniform")
    ax.set_xlabel("round")
    ax.set_ylabel("team reward")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    written.append(save_png(fig, out / "reward.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, ys in (("G", [_finite(r.metrics.g_macs_fraction) for r in records]),
                      ("D", [_finite(r.metrics.d_macs_fraction) for r in records])):
        ax.plot(rounds, ys, "o", ms=3, label=f"{label} MACs / teacher")
    ax.set_xlabel("round")
    ax.set_ylabel("MACs fraction")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    written.append(save_png(fig, out / "macs.png"))
    plt.close(fig)
    return written


def save_png(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG (100 dpi), atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def plot_ratio_heatmap(records: Sequence[EvaluationRecord], role: str, group_names: Sequence[str],
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

    short = role[0]  # g_ratios / d_ratios; one column per evaluated candidate
    grid = np.full((len(group_names), max(1, len(records))), np.nan)
    for j, record in enumerate(records):
        ratios = record.ratios(short)
        grid[: len(ratios), j] = ratios
    fig, ax = plt.subplots(figsize=(max(5.0, 0.18 * grid.shape[1] + 3), 0.32 * len(group_names) + 1.6))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest",
                      extent=(-0.5, grid.shape[1] - 0.5, len(group_names) - 0.5, -0.5))
    ax.set_yticks(range(len(group_names)))
    ax.set_yticklabels([f"{i}: {n if len(n) <= 28 else '...' + n[-25:]}" for i, n in enumerate(group_names)], fontsize=7)
    ax.set_xlabel("evaluation (round x slot)")
    ax.set_title(f"{role} keep ratio per prunable group")
    fig.colorbar(image, ax=ax, label="keep ratio")
    fig.tight_layout()
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out


def plot_sample_grid(columns: Sequence[tuple[str, Any]], path: str | os.PathLike[str], rows: int = 6) -> Path:
    """Write a grid of images: one column per named image set, one row per test image.

    :param columns: ``(title, images)`` pairs; ``images`` is a tensor (N, C, H, W) in [-1, 1] (C = 1
        or 3), the same N images in the same order in every column (e.g. input, teacher, uniform,
        best found, ground truth).
    :param path: the PNG file (written atomically).
    :param rows: images shown (spread evenly over N).
    :returns: ``path``.
    :raises ValueError: no columns, or columns of different lengths.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not columns:
        raise ValueError("plot_sample_grid: no columns")
    n = len(columns[0][1])
    if any(len(images) != n for _, images in columns):
        raise ValueError("plot_sample_grid: every column needs the same images")
    rows = min(rows, n)
    picks = [i * n // rows for i in range(rows)]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.9 * len(columns), 1.9 * rows), squeeze=False)
    for j, (title, images) in enumerate(columns):
        for i, k in enumerate(picks):
            img = ((images[k].detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax = axes[i][j]
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out
