"""The channel space of one role (G or D): its prunable groups, MACs table and budget arithmetic.

Used by the environment (every step) and by the evaluation (uniform candidate), so a keep-ratio
vector maps to the same kept channels and MACs everywhere (DESIGN.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from collabprune.config import PruningConfig
from collabprune.errors import BudgetError
from collabprune.metrics.macs import MacsTable, estimate_macs, group_macs_table
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
