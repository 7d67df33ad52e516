"""The channel space of one role (G or D): its prunable groups, MACs table and budget arithmetic.

Used by the environment (every step) and by the evaluation (uniform candidate), so a keep-ratio
vector maps to the same kept channels and MACs everywhere (DESIGN.md §3).

A budget is a fraction of the teacher's *cost*: its physical MACs, or, when the generator has a
latency budget (``pruning.budget.generator: {latency_ms: ...}``), its latency as predicted by the
run's measured :class:`~collabprune.pruning.latency_model.LatencyModel`. Projection, uniform ratio
and feasibility are the same arithmetic on either cost (both are monotone in every group's kept
channels).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from collabprune.config import LatencyBudget, PruningConfig
from collabprune.errors import BudgetError, ConfigError
from collabprune.pruning.costs import MacsTable, estimate_macs, group_macs_table
from collabprune.pruning.groups import PrunableGroup, discover_groups
from collabprune.pruning.latency_model import LatencyModel, load_latency_model
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
    :param latency: the latency model budgets are costed with (a generator's latency budget), or
        None for MACs budgets.
    """

    role: str
    groups: tuple[PrunableGroup, ...]
    table: MacsTable
    teacher_macs: int
    input_shape: tuple[int, int, int, int]
    cfg: PruningConfig
    latency: LatencyModel | None = None

    @classmethod
    def of(cls, role: str, model: nn.Module, input_shape: Sequence[int], cfg: PruningConfig) -> "ChannelSpace":
        """Discover the groups of ``model`` (built with ``inplace=False``) and tabulate its MACs.

        :param input_shape: (B, C, H, W), e.g. (1, 3, 128, 128) for G, (1, 6, 128, 128) for D.
        :raises ConfigError: the generator has a latency budget and its latency model is not measured
            yet, unreadable, or was measured on another network, backend or batch size.
        """
        shape = tuple(int(s) for s in input_shape)
        device = next(model.parameters()).device
        groups = tuple(discover_groups(model, torch.zeros(shape, device=device)))
        table = group_macs_table(model, groups, shape)
        full = estimate_macs(table, [g.channels for g in groups])
        latency = None
        budget = cfg.budget.generator
        if role == "g" and isinstance(budget, LatencyBudget):
            latency = load_latency_model(cfg.latency_model)
            latency.check_table(table, shape, f"pruning.latency_model {cfg.latency_model}")
            if (latency.backend, latency.batch) != (budget.backend, budget.batch):
                raise ConfigError(f"pruning.latency_model {cfg.latency_model}: measured on {latency.backend} at batch "
                                  f"{latency.batch}, the budget asks for {budget.backend} at batch {budget.batch}")
        return cls(role, groups, table, full, shape, cfg, latency)  # type: ignore[arg-type]

    @property
    def unit(self) -> str:
        """What budgets of this space are fractions of, for messages."""
        if self.latency is None:
            return "teacher MACs"
        return f"the teacher's predicted {self.latency.backend} latency ({self.latency.teacher_predicted_ms:.3g} ms)"

    @property
    def teacher_cost(self) -> float:
        """The unpruned network's cost: physical MACs, or predicted latency in ms."""
        return float(self.teacher_macs) if self.latency is None else self.latency.teacher_predicted_ms

    def cost_of_kept(self, kept: Sequence[int] | np.ndarray) -> Any:
        """Cost of sub-networks keeping ``kept`` channels per group, (G,) or (M, G): physical MACs
        (exact int), or predicted latency in ms under a latency budget."""
        if self.latency is None:
            return estimate_macs(self.table, kept)
        return self.latency.predict_ms(self.table, kept)

    def cost_fraction(self, ratios: Sequence[float]) -> float:
        """The candidate's cost as a fraction of the teacher's (what budgets bound)."""
        return float(self.cost_of_kept(self.kept(ratios))) / self.teacher_cost

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
            "latency": None if self.latency is None else self.latency.to_dict(),
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
        """The smallest cost fraction reachable within ``[r_min, r_max]`` (every group at r_min)."""
        return self.cost_fraction([self.cfg.r_min] * self.num_groups)

    def check_budget(self, budget: float) -> None:
        """:raises BudgetError: when even every group at ``r_min`` exceeds ``budget``."""
        floor = self.min_fraction()
        if floor > budget + 1e-12:
            raise BudgetError(
                f"pruning.budget for {self.role}: {budget:.3f} of {self.unit} is infeasible; every group at "
                f"r_min={self.cfg.r_min} still costs {floor:.3f}",
                hint="raise the budget, lower pruning.r_min, or lower round_to / min_channels",
            )

    def project(self, ratios: Sequence[float], budget: float, iters: int = 50) -> list[float]:
        """Project a requested keep-ratio vector onto a budget (DESIGN.md §5, "Budget"): MACs, or
        predicted latency under a latency budget (:meth:`cost_of_kept`).

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
        :param budget: the budget as a fraction of the unpruned network's cost (:attr:`teacher_cost`).
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
        limit = budget * self.teacher_cost * (1 + 1e-12)
        chan = self.table.channels
        cost = self.cost_of_kept

        def scaled(i: int, scale: float) -> float:
            return min(hi_r, max(lo_r, scale * req[i]))

        def kept_of(i: int, scale: float) -> int:
            return kept_channels(self.groups[i].channels, scaled(i, scale), self.cfg)

        def kept_at(scale: float) -> list[int]:
            return [kept_of(i, scale) for i in range(self.num_groups)]

        # Bisection on the scale. Every group's kept count is monotone in the scale, so a group with
        # the same count at both ends of the bracket has it at the midpoint too: only the groups that
        # still differ are recomputed, and the cost only when the midpoint matches neither end. The
        # answers (and so ``lo``) are those of costing every midpoint in full.
        lo, hi = 0.0, max(hi_r / min(req), 1.0)
        k_hi = kept_at(hi)
        if cost(k_hi) <= limit:
            lo = hi
        else:
            k_lo = kept_at(lo)
            fits_lo = cost(k_lo) <= limit
            moving = [i for i in range(self.num_groups) if k_lo[i] != k_hi[i]]
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                k_mid = list(k_lo)
                for i in moving:
                    k_mid[i] = kept_of(i, mid)
                if k_mid == k_lo:
                    fits = fits_lo
                else:
                    fits = k_mid != k_hi and cost(k_mid) <= limit
                if fits:
                    lo, k_lo, fits_lo = mid, k_mid, True
                else:
                    hi, k_hi = mid, k_mid
                moving = [i for i in moving if k_lo[i] != k_hi[i]]
        target = np.array([scaled(i, lo) * g.channels for i, g in enumerate(self.groups)])
        top, floor = self._kept_at_bounds
        step = int(self.cfg.round_to)
        rows = np.arange(len(chan))

        def fill(kept: np.ndarray) -> np.ndarray:
            # every group's next step is costed in one batch (MACs: int64, exact)
            while True:
                base = cost(kept)
                trials = np.repeat(kept[None, :], len(chan), axis=0)
                trials[rows, rows] = np.minimum(top, kept + step)
                extra = cost(trials)
                ok = (kept < top) & (extra <= limit)
                if not ok.any():
                    return kept
                # the group furthest below its scaled request (relative to its channels) gets the
                # step; ties: the cheaper step, then the earlier group
                key = np.where(ok, (kept - target) / chan, np.inf)
                tied = key == key.min()
                i = int(np.argmin(np.where(tied, extra - base, np.inf)))
                kept = trials[i]

        kept = fill(np.asarray(kept_at(lo), dtype=np.int64))
        # Few, coarse groups (a PatchGAN D, a thin ResNet's residual stream) can stop short of 98%:
        # trade one or two steps of some groups for cheaper steps elsewhere while that gets closer.
        while cost(kept) < 0.98 * budget * self.teacher_cost:
            moves = []
            for i in range(self.num_groups):
                for j in range(i, self.num_groups):
                    trial = kept.copy()
                    trial[i] -= step
                    if j != i:
                        trial[j] -= step
                    if trial[i] >= floor[i] and trial[j] >= floor[j]:
                        moves.append(fill(trial))
            here = cost(kept)
            better = [m for m in moves if cost(m) > here]
            if not better:
                break
            kept = max(better, key=cost)
        return [int(k) / int(c) for k, c in zip(kept, chan)]

    @cached_property
    def _kept_at_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(G,) kept channels of every group at ``r_max`` and at ``r_min`` (the fill's ceiling and floor)."""
        return tuple(np.array([kept_channels(g.channels, r, self.cfg) for g in self.groups])  # type: ignore[return-value]
                     for r in (self.cfg.r_max, self.cfg.r_min))

    def uniform_candidate(self, budget: float) -> list[float]:
        """The uniform candidate at ``budget``: :meth:`uniform_ratio` for every group, projected
        (:meth:`project`) so that it uses the budget as fully as every other candidate.

        :raises BudgetError: the budget is infeasible.
        """
        return self.project([self.uniform_ratio(budget)] * self.num_groups, budget)

    def uniform_ratio(self, budget: float, iters: int = 40) -> float:
        """The largest single keep ratio (same for every group) whose candidate meets ``budget``.

        Bisection on ``r`` in ``[r_min, r_max]`` over the rounded cost fraction (monotone in r).

        :param budget: the budget as a fraction of the teacher's cost (MACs, or predicted latency).
        :raises BudgetError: the budget is infeasible.
        """
        self.check_budget(budget)
        lo, hi = self.cfg.r_min, self.cfg.r_max
        if self.cost_fraction([hi] * self.num_groups) <= budget:
            return hi
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if self.cost_fraction([mid] * self.num_groups) <= budget:
                lo = mid
            else:
                hi = mid
        return lo
