"""The action space of one role: its channel space plus the MACs budget rule.

:class:`RoleSpace` wraps :class:`collabprune.pruning.space.ChannelSpace` (the groups, the kept-channel
rounding of ``kept_channels`` and the exact MACs table shared with the evaluator, so a ratio vector
costs the same everywhere) and adds the AMC budget correction (He et al. 2018, "AMC: AutoML for
Model Compression", §3.3): before group ``t`` is decided, the largest keep ratio is found such that
the groups decided so far, group ``t`` at that ratio and every later group at ``r_min`` still fit the
MACs budget. MACs are non-decreasing in every kept count, and the kept counts (after rounding to
``round_to``) are what is costed, so a proposal built this way never exceeds its budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import nn

from collabprune.config import PruningConfig, RunConfig
from collabprune.errors import BudgetError
from collabprune.pruning.groups import PrunableGroup
from collabprune.pruning.prune import kept_channels
from collabprune.pruning.space import ChannelSpace

ROLES: tuple[str, str] = ("generator", "discriminator")

#: Iterations of the bisection on the keep ratio (interval width (r_max - r_min) / 2**40).
_BISECT_STEPS = 40


def role_model_and_input(role: str, cfg: RunConfig) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """The unpruned network of a role (``inplace=False``) and its example input shape (B=1).

    :param role: ``"generator"`` or ``"discriminator"``.
    :param cfg: the run config (``model``, ``data.input_nc``/``output_nc``, ``data.crop_size``).
    :returns: (module, (1, C, crop_size, crop_size)); the conditional D sees input_nc + output_nc.
    :raises ValueError: unknown role.
    """
    from collabprune.models import build_discriminator, build_generator

    size = cfg.data.crop_size
    if role == "generator":
        return build_generator(cfg, inplace=False), (1, cfg.data.input_nc, size, size)
    if role == "discriminator":
        return build_discriminator(cfg, inplace=False), (1, cfg.data.input_nc + cfg.data.output_nc, size, size)
    raise ValueError(f"role {role!r} is not one of {ROLES}")


@dataclass
class RoleSpace:
    """Channel space and budget of one role, with the AMC budget correction.

    :param role: ``"generator"`` or ``"discriminator"``.
    :param channels: the role's :class:`ChannelSpace` (groups, MACs table, rounding rule).
    :param budget: MACs budget as a fraction of the teacher's physical MACs.
    :raises BudgetError: the budget cannot be met even with every group at ``r_min``.
    """

    role: str
    channels: ChannelSpace
    budget: float

    def __post_init__(self) -> None:
        self.channels.check_budget(self.budget)
        self.teacher_macs = float(self.channels.teacher_macs)
        self.budget_macs = self.budget * self.teacher_macs

    # ------------------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, role: str, cfg: RunConfig) -> "RoleSpace":
        """Trace the role's unpruned network (untrained: only shapes matter) and build its space.

        :param role: ``"generator"`` or ``"discriminator"``.
        :param cfg: the run config.
        :raises BudgetError: infeasible budget.
        """
        model, shape = role_model_and_input(role, cfg)
        channels = ChannelSpace.of(role[0], model, shape, cfg.pruning)
        budget = cfg.pruning.budget.generator if role == "generator" else cfg.pruning.budget.discriminator
        return cls(role=role, channels=channels, budget=budget)

    # ---------------------------------------------------------------------------- properties
    @property
    def groups(self) -> Sequence[PrunableGroup]:
        """The prunable groups, network order."""
        return self.channels.groups

    @property
    def pruning(self) -> PruningConfig:
        return self.channels.cfg

    @property
    def n_groups(self) -> int:
        """Number of prunable groups (= steps per episode)."""
        return self.channels.num_groups

    @property
    def r_min(self) -> float:
        return float(self.pruning.r_min)

    @property
    def r_max(self) -> float:
        return float(self.pruning.r_max)

    # ---------------------------------------------------------------------------- arithmetic
    def kept(self, ratios: Sequence[float]) -> list[int]:
        """Kept channels per group for a full ratio vector (length ``n_groups``)."""
        return self.channels.kept(ratios)

    def macs_fraction(self, ratios: Sequence[float]) -> float:
        """Physical MACs of the candidate as a fraction of the teacher's (exact, via the table)."""
        return self.channels.macs_fraction(ratios)

    def lower_bound(self, decided: Sequence[float]) -> float:
        """MACs fraction with ``decided`` ratios for the first groups and ``r_min`` for the rest."""
        rest = [self.r_min] * (self.n_groups - len(decided))
        return self.macs_fraction(list(decided) + rest)

    def fits(self, ratios: Sequence[float]) -> bool:
        """Whether a full ratio vector is within the MACs budget."""
        return self.channels.macs_of_kept(self.kept(ratios)) <= self.budget_macs * (1 + 1e-12)

    def ratio_to_action(self, ratio: float) -> float:
        """Inverse of :meth:`action_to_ratio`: keep ratio -> action in [-1, 1]."""
        span = self.r_max - self.r_min
        if span <= 0:
            return 0.0
        return float(np.clip(2.0 * (ratio - self.r_min) / span - 1.0, -1.0, 1.0))

    def action_to_ratio(self, action: float) -> float:
        """Action in [-1, 1] (clipped) -> keep ratio in [r_min, r_max] (linear)."""
        a = float(np.clip(action, -1.0, 1.0))
        return self.r_min + (a + 1.0) * 0.5 * (self.r_max - self.r_min)

    def max_feasible_ratio(self, decided: Sequence[float], ratio: float | None = None) -> float:
        """AMC budget correction: the largest keep ratio <= ``ratio`` for the next group.

        The next group is ``len(decided)``; every later group is assumed at ``r_min``. Kept counts
        (with their rounding) are what is costed, so rounding up can never break the budget. If
        ``decided`` itself was built by this rule, ``r_min`` is always feasible.

        :param decided: ratios of the groups already decided (network order).
        :param ratio: the requested ratio (default ``r_max``).
        :returns: a ratio in [r_min, ratio]; ``ratio`` itself when it fits.
        """
        t = len(decided)
        if t >= self.n_groups:
            raise IndexError(f"all {self.n_groups} groups are decided")
        want = self.r_max if ratio is None else float(np.clip(ratio, self.r_min, self.r_max))
        rest = [self.r_min] * (self.n_groups - t - 1)

        def fits(r: float) -> bool:
            return self.fits([*decided, r, *rest])

        if fits(want):
            return want
        lo, hi = self.r_min, want  # lo fits (invariant), hi does not
        for _ in range(_BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            if fits(mid):
                lo = mid
            else:
                hi = mid
        # a tidier number with the same kept count, when there is one
        tidy = max(self.r_min, math.floor(lo * 1e4) / 1e4)
        c = self.groups[t].channels
        if kept_channels(c, tidy, self.pruning) == kept_channels(c, lo, self.pruning):
            lo = tidy
        return lo

    def repair(self, ratios: Sequence[float]) -> list[float]:
        """Final safety pass: lower ratios until the proposal fits the budget.

        Never needed for proposals built with :meth:`max_feasible_ratio`; it guards against a
        rounding rule that is not monotone. Groups are lowered to ``r_min`` in decreasing order of
        their MACs share.

        :param ratios: a full ratio vector.
        :returns: a ratio vector within the budget.
        :raises BudgetError: still over budget with every group at ``r_min`` (cannot happen after
            construction succeeded).
        """
        out = [float(r) for r in ratios]
        if self.fits(out):
            return out
        for g in sorted(range(self.n_groups), key=lambda i: -self.groups[i].macs_share):
            out[g] = self.r_min
            if self.fits(out):
                return out
        raise BudgetError(f"{self.role} proposal cannot be brought within its MACs budget {self.budget:g}")


def peer_length(spaces: Sequence[RoleSpace]) -> int:
    """Length of the fixed-size peer ratio vector: the largest group count among the roles."""
    return max(s.n_groups for s in spaces)
