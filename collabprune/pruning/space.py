"""The channel space of one role (G or D): its prunable groups, MACs table and budget arithmetic.

Used by the environment (every step) and by the evaluation (uniform candidate), so a keep-ratio
vector maps to the same kept channels and MACs everywhere (DESIGN.md §3).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch
from torch import nn

from collabprune.config import PruningConfig
from collabprune.errors import BudgetError
from collabprune.pruning.costs import MacsTable, estimate_macs, group_macs_table
from collabprune.pruning.groups import PrunableGroup, discover_groups
from collabprune.pruning.prune import kept_channels


@dataclass(frozen=True)
class ChannelSpace:
    """Prunable groups of one network with a MACs table for fast candidate costing.

    :param role: ``g`` (generator) or ``d`` (discriminator).
    :param groups: prunable groups in network order.
    :param table: per-layer MACs table of the unpruned network.
    :param teacher_macs: physical MACs of the unpruned network for ``input_shape``.
    :param input_shape: (B, C, H, W) the MACs are counted for.
    :param cfg: the pruning config (keep-ratio range, rounding).
    """

    role: str
    groups: tuple[PrunableGroup, ...]
    table: MacsTable
    teacher_macs: int
    input_shape: tuple[int, int, int, int]
    cfg: PruningConfig

    @classmethod
    def of(cls, role: str, model: nn.Module, input_shape: Sequence[int], cfg: PruningConfig) -> "ChannelSpace":
        """Discover the groups of ``model`` (built with ``inplace=False``) and tabulate its MACs.

        :param input_shape: (B, C, H, W), e.g. (1, 3, 128, 128) for G, (1, 6, 128, 128) for D.
        """
        shape = tuple(int(s) for s in input_shape)
        device = next(model.parameters()).device
        groups = tuple(discover_groups(model, torch.zeros(shape, device=device)))
        table = group_macs_table(model, groups, shape)
        full = estimate_macs(table, [g.channels for g in groups])
        return cls(role, groups, table, full, shape, cfg)  # type: ignore[arg-type]

    @property
    def num_groups(self) -> int:
        """Number of prunable groups."""
        return len(self.groups)

    @cached_property
    def digest(self) -> str:
        """16 hex characters identifying this space: role, input shape, every group (name, channels,
        layers), the MACs table and the pruning config. Two processes that built the space of the
        same network (the agents' envs, the Coordinator, the evaluators) agree on it exactly when a
        keep-ratio vector means the same channels and MACs to both."""
        data = {
            "role": self.role, "input_shape": list(self.input_shape), "teacher_macs": int(self.teacher_macs),
            "groups": [[g.name, int(g.channels), list(g.out_layers), [list(x) for x in g.in_layers]]
                       for g in self.groups],
            "table": {k: getattr(self.table, k).tolist() for k in ("unit", "unit_published", "in_fixed", "out_fixed",
                                                                 "in_map", "out_map", "channels")},
            "layers": list(self.table.layers), "cfg": self.cfg.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def kept(self, ratios: Sequence[float]) -> list[int]:
        """Kept channels per group for keep ``ratios`` (rounded as :func:`kept_channels`)."""
        if len(ratios) != self.num_groups:
            raise ValueError(f"{self.role}: expected {self.num_groups} keep ratios, got {len(ratios)}")
        return [kept_channels(g.channels, r, self.cfg) for g, r in zip(self.groups, ratios)]

    def macs_of_kept(self, kept: Sequence[int]) -> int:
        """Physical MACs of the sub-network keeping ``kept`` channels per group."""
        return estimate_macs(self.table, kept)

    def macs_fraction(self, ratios: Sequence[float]) -> float:
        """Physical MACs of the candidate as a fraction of the unpruned network's."""
        return self.macs_of_kept(self.kept(ratios)) / self.teacher_macs

    def min_fraction(self) -> float:
        """The smallest MACs fraction reachable within ``[r_min, r_max]`` (every group at r_min)."""
        return self.macs_fraction([self.cfg.r_min] * self.num_groups)

    def check_budget(self, budget: float) -> None:
        """:raises BudgetError: when even every group at ``r_min`` exceeds ``budget``."""
        floor = self.min_fraction()
        if floor > budget + 1e-12:
            raise BudgetError(
                f"pruning.budget for {self.role}: {budget:.3f} of teacher MACs is infeasible; every group at "
                f"r_min={self.cfg.r_min} still costs {floor:.3f}",
                hint="raise the budget, lower pruning.r_min, or lower round_to / min_channels",
            )

    def project(self, ratios: Sequence[float], budget: float, iters: int = 50) -> list[float]:
        """Project a requested keep-ratio vector onto a MACs budget (DESIGN.md §5, "Budget").

        1. One common scale ``s`` on the requested ratios: ``q_i = clip(s * r_i, r_min, r_max)``,
           the largest ``s`` (bisection) whose rounded candidate fits ``budget``. Groups pinned at
           ``r_min`` or ``r_max`` by the clip stay there; the free groups share the scale, so the
           relative allocation the caller asked for is kept.
        2. Rounding (:func:`kept_channels`) is what is costed, so the scaled candidate never exceeds
           the budget.
        3. Fill: while some group can take one more ``round_to`` step within the budget, the group
           furthest below its scaled request ``s * r_i * channels`` (relative to its channels) gets it.
           The result then misses the budget by less than the cheapest step still possible. Below
           98% of the budget (few, coarse groups), one or two groups give back a step and the fill
           runs again, as long as that gets closer to the budget.

        :param ratios: requested keep ratios, one per group (any positive numbers; clipped to
            ``[r_min, r_max]``).
        :param budget: MACs budget as a fraction of the unpruned network's physical MACs.
        :returns: keep ratios ``kept_i / channels_i`` (exactly representable kept counts), within
            the budget.
        :raises BudgetError: the budget is infeasible (every group at ``r_min`` exceeds it).
        :raises ValueError: wrong length or a non-positive / non-finite ratio.
        """
        self.check_budget(budget)
        req = [float(r) for r in ratios]
        if len(req) != self.num_groups:
            raise ValueError(f"{self.role}: expected {self.num_groups} keep ratios, got {len(req)}")
        if not all(math.isfinite(r) and r > 0 for r in req):
            raise ValueError(f"{self.role}: keep ratios must be positive and finite, got {req}")
        lo_r, hi_r = self.cfg.r_min, self.cfg.r_max
        limit = budget * self.teacher_macs * (1 + 1e-12)

        def scaled(scale: float) -> list[float]:
            return [min(hi_r, max(lo_r, scale * r)) for r in req]

        def cost(kept: Sequence[int]) -> int:
            return self.macs_of_kept(kept)

        lo, hi = 0.0, max(hi_r / min(req), 1.0)
        if cost(self.kept(scaled(hi))) <= limit:
            lo = hi
        else:
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if cost(self.kept(scaled(mid))) <= limit else (lo, mid)
        target = [q * g.channels for q, g in zip(scaled(lo), self.groups)]
        top = [kept_channels(g.channels, hi_r, self.cfg) for g in self.groups]
        floor = [kept_channels(g.channels, lo_r, self.cfg) for g in self.groups]
        step = int(self.cfg.round_to)

        def fill(kept: list[int]) -> list[int]:
            while True:
                best, best_key = None, None
                base = cost(kept)
                for i, g in enumerate(self.groups):
                    if kept[i] >= top[i]:
                        continue
                    trial = list(kept)
                    trial[i] = min(top[i], kept[i] + step)
                    extra = cost(trial)
                    if extra > limit:
                        continue
                    key = ((kept[i] - target[i]) / g.channels, extra - base)
                    if best_key is None or key < best_key:
                        best, best_key = trial, key
                if best is None:
                    return kept
                kept = best

        kept = fill(self.kept(scaled(lo)))
        # Few, coarse groups (a PatchGAN D, a thin ResNet's residual stream) can stop short of 98%:
        # trade one or two steps of some groups for cheaper steps elsewhere while that gets closer.
        while cost(kept) < 0.98 * budget * self.teacher_macs:
            moves = []
            for i in range(self.num_groups):
                for j in range(i, self.num_groups):
                    trial = list(kept)
                    trial[i] -= step
                    if j != i:
                        trial[j] -= step
                    if trial[i] >= floor[i] and trial[j] >= floor[j]:
                        moves.append(fill(trial))
            better = [m for m in moves if cost(m) > cost(kept)]
            if not better:
                break
            kept = max(better, key=cost)
        return [k / g.channels for k, g in zip(kept, self.groups)]

    def uniform_candidate(self, budget: float) -> list[float]:
        """The uniform candidate at ``budget``: :meth:`uniform_ratio` for every group, projected
        (:meth:`project`) so that it uses the budget as fully as every other candidate.

        :raises BudgetError: the budget is infeasible.
        """
        return self.project([self.uniform_ratio(budget)] * self.num_groups, budget)

    def uniform_ratio(self, budget: float, iters: int = 40) -> float:
        """The largest single keep ratio (same for every group) whose candidate meets ``budget``.

        Bisection on ``r`` in ``[r_min, r_max]`` over the rounded MACs fraction (monotone in r).

        :param budget: MACs budget as a fraction of the teacher's physical MACs.
        :raises BudgetError: the budget is infeasible.
        """
        self.check_budget(budget)
        lo, hi = self.cfg.r_min, self.cfg.r_max
        if self.macs_fraction([hi] * self.num_groups) <= budget:
            return hi
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if self.macs_fraction([mid] * self.num_groups) <= budget:
                lo = mid
            else:
                hi = mid
        return lo
