"""The quality/cost front of a search: every evaluated candidate's quality against its generator cost.

Quality is the candidate's Frechet distance on the reward split (``fid``, or the labelled fallback
``fd_teacher_d``; lower is better), an absolute number comparable across budgets, unlike the reward,
which is relative to the uniform candidate of the candidate's own budget (DESIGN.md §4). The reward
split is held out from fine-tuning. Cost is the generator's physical MACs as a fraction of the
teacher's, and for the front's members the latency of the pruned generator measured on this machine
(PyTorch CPU, batch 1: :func:`collabprune.backends.backend_latency_s`).

A candidate is on the front when no other candidate is at most as costly and at most as distant
with one of the two strictly smaller (Pareto optimality, both minimised). ``collabprune inspect``
draws ``plots/front.png``: every candidate, the front, each budget's uniform candidate and each
budget's re-evaluated best (``front.json`` of a multi-budget search, or ``best.json``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from collabprune.config import RunConfig
from collabprune.records import EvaluationRecord


@dataclass(frozen=True)
class FrontPoint:
    """One evaluated candidate on the quality/cost plane.

    :param round: its round (-1: a uniform candidate).
    :param slot: its slot in the round.
    :param budget: the generator budget it was searched at (``None``: the run's only budget).
    :param g_macs_fraction: the pruned G's physical MACs over the teacher's.
    :param fd: its Frechet distance on the reward split (lower is better).
    :param on_front: whether it is Pareto-optimal among the candidates (:func:`pareto_front`).
    :param latency_ms: the pruned G's median CPU latency at batch 1, milliseconds (front members,
        uniform candidates and budget winners only; ``None`` for the others).
    """

    round: int
    slot: int
    budget: float | None
    g_macs_fraction: float
    fd: float
    on_front: bool = False
    latency_ms: float | None = None


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the Pareto-optimal points when both ``costs`` and ``scores`` are minimised, in
    increasing cost. Non-finite points are never on the front; of exact duplicates the first is kept.

    :param costs: e.g. G MACs fractions.
    :param scores: e.g. Frechet distances (same length).
    :raises ValueError: the sequences differ in length.
    """
    if len(costs) != len(scores):
        raise ValueError(f"pareto_front: {len(costs)} costs but {len(scores)} scores")
    order = sorted((i for i in range(len(costs)) if math.isfinite(costs[i]) and math.isfinite(scores[i])),
                   key=lambda i: (costs[i], scores[i], i))
    front, best = [], math.inf
    for i in order:
        if scores[i] < best:  # strictly better than everything at most as costly
            front.append(i)
            best = scores[i]
    return front


def front_points(records: Sequence[EvaluationRecord]) -> list[FrontPoint]:
    """The candidates of a run (uniform and search records) on the quality/cost plane, with the
    front marked; records without a finite FD or MACs fraction (diverged ones) are left out."""
    usable = [r for r in records if r.round is not None and r.round >= -1 and not r.diverged
              and r.metrics.number(r.metrics.fd_metric) is not None and r.metrics.number("g_macs_fraction") is not None]
    costs = [float(r.metrics.g_macs_fraction) for r in usable]  # type: ignore[arg-type]
    scores = [float(r.metrics.fd) for r in usable]  # type: ignore[arg-type]
    on = set(pareto_front(costs, scores))
    return [FrontPoint(round=int(r.round), slot=int(r.slot or 0), budget=r.budget, g_macs_fraction=c, fd=s,  # type: ignore[arg-type]
                       on_front=i in on) for i, (r, c, s) in enumerate(zip(usable, costs, scores))]


def measure_front_latency(cfg: RunConfig, points: Sequence[FrontPoint], records: Sequence[EvaluationRecord],
                          winners: Sequence[tuple[int, int]] = ()) -> list[FrontPoint]:
    """``points`` with ``latency_ms`` measured for the front's members, the uniform candidates and
    ``winners`` ((round, slot) pairs): each G is pruned from the unpruned architecture (latency does
    not depend on the weights) and timed on PyTorch CPU at batch 1 (median of 10 runs).

    :param cfg: the run's config (architecture, crop size, rounding).
    :param points: from :func:`front_points`.
    :param records: the records the points came from (their ``g_ratios``).
    """
    import dataclasses

    import torch

    from collabprune.backends import backend_latency_s
    from collabprune.models import build_generator
    from collabprune.pruning.prune import prune_model
    from collabprune.pruning.roles import Role

    shape = Role.of("generator", cfg).input_shape
    teacher = build_generator(cfg, inplace=False).eval()
    ratios = {(int(r.round or 0), int(r.slot or 0)): r.g_ratios for r in records if r.round is not None}
    wanted = set(winners)
    out = []
    with torch.no_grad():
        backend_latency_s(teacher, shape, "torch-cpu", repeats=3)  # first-call costs (allocator, kernels) untimed
        for p in points:
            if p.on_front or p.round == -1 or (p.round, p.slot) in wanted:
                net, _ = prune_model(teacher, torch.zeros(shape), ratios[(p.round, p.slot)], cfg.pruning)
                p = dataclasses.replace(p, latency_ms=1e3 * backend_latency_s(net, shape, "torch-cpu", repeats=10))
            out.append(p)
    return out


def plot_front(points: Sequence[FrontPoint], path: str | os.PathLike[str], fd_name: str = "FD",
               winners: Sequence[tuple[int, int]] = ()) -> Path:
    """Write the front PNG: quality (FD, lower is better) against G MACs fraction, and against
    measured CPU latency where it was measured (that panel's front is the Pareto front of the timed
    points by latency). The FD axis is logarithmic when it spans more than a factor of 20.

    :param points: from :func:`front_points` (and :func:`measure_front_latency`).
    :param path: the PNG file (written atomically).
    :param fd_name: the FD's name for the axis (``fid`` or ``fd_teacher_d``).
    :param winners: (round, slot) of each budget's re-evaluated best, drawn as stars.
    :returns: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from collabprune.plots import save_png

    timed = [p for p in points if p.latency_ms is not None]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4), squeeze=False)
    budgets = sorted({p.budget for p in points if p.budget is not None})
    colours = {b: plt.cm.viridis(0.15 + 0.7 * i / max(1, len(budgets) - 1)) for i, b in enumerate(budgets)}
    wins = set(winners)
    panels = [(axes[0][0], lambda p: p.g_macs_fraction, "G MACs / teacher's")]
    if timed:
        panels.append((axes[0][1], lambda p: p.latency_ms, "G latency, ms (PyTorch CPU, batch 1)"))
    for ax, x_of, label in panels:
        pts = [p for p in points if x_of(p) is not None]
        search = [p for p in pts if p.round >= 0]
        for b in budgets or [None]:
            mine = [p for p in search if p.budget == b]
            if mine:
                ax.scatter([x_of(p) for p in mine], [p.fd for p in mine], s=10, alpha=0.45,
                           color=colours.get(b, "tab:blue"), label=f"candidates, budget {b:g}" if b else "candidates")
        front = [pts[i] for i in pareto_front([x_of(p) for p in pts], [p.fd for p in pts])]  # this panel's cost
        ax.plot([x_of(p) for p in front], [p.fd for p in front], "-o", color="tab:red", ms=4, lw=1.5,
                label="front (Pareto)")
        uni = [p for p in pts if p.round == -1]
        ax.scatter([x_of(p) for p in uni], [p.fd for p in uni], marker="s", s=40, facecolors="none",
                   edgecolors="black", label="uniform")
        best = [p for p in pts if (p.round, p.slot) in wins]
        ax.scatter([x_of(p) for p in best], [p.fd for p in best], marker="*", s=140, color="gold",
                   edgecolors="black", zorder=5, label="best per budget (re-evaluated)")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{fd_name} on the reward split (lower is better)")
        fds = [p.fd for p in pts if p.fd > 0]
        if fds and max(fds) > 20 * min(fds):
            ax.set_yscale("log")
    axes[0][0].legend(loc="best", fontsize=7)
    fig.suptitle("quality against cost of every evaluated candidate", fontsize=10)
    fig.tight_layout()
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out


__all__ = ["FrontPoint", "front_points", "measure_front_latency", "pareto_front", "plot_front"]
