"""The action space of one role: its channel space, the action -> keep-ratio map and the budget projection.

DESIGN.md §5. An action ``a`` in [-1, 1] is a log2 multiplier on the role's uniform keep ratio ``u``
(the largest single ratio meeting the budget): ``ratio = clip(u * 2**(k * a), r_min, r_max)`` with
``k = search.action_log2_range`` (the discriminator's ``search.d_action_log2_range`` when set). The
zero action is therefore the uniform candidate, and the policy's initial outputs (near 0) are near it.
A finished proposal (one requested ratio per group) is projected onto the budget by
:meth:`collabprune.pruning.space.ChannelSpace.project` (one common scale on the free groups, rounding,
then a fill), so every proposal uses at least 98% of the G budget and never exceeds it, and no group
is starved unless the policy asks for it.

:class:`RoleSpace` wraps the role's :class:`~collabprune.pruning.space.ChannelSpace` (groups,
rounding and the exact MACs table shared with the evaluator, so a ratio vector costs the same
everywhere).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from collabprune.config import RunConfig
from collabprune.pruning.groups import PrunableGroup
from collabprune.pruning.roles import ROLE_NAMES, Role, generator_budgets, slot_budget
from collabprune.pruning.space import ChannelSpace

ROLES = ROLE_NAMES


def role_model_and_input(role: str, cfg: RunConfig) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """The unpruned network of a role (``inplace=False``, untrained: only shapes matter) and its
    example input shape (B=1).

    :raises ValueError: unknown role.
    """
    from collabprune.models import build_discriminator, build_generator

    r = Role.of(role, cfg)
    model = build_generator(cfg, inplace=False) if r.name == "generator" else build_discriminator(cfg, inplace=False)
    return model, r.input_shape


@dataclass
class RoleSpace:
    """Channel space, budget and action map of one role.

    :param role: the role (name, peer, input shape, budget).
    :param channels: the role's :class:`ChannelSpace`.
    :param log2_range: ``k``: the action 1 (-1) multiplies the uniform ratio by 2**k (2**-k).
    :raises BudgetError: the budget cannot be met even with every group at ``r_min``.
    """

    role: Role
    channels: ChannelSpace
    log2_range: float = 1.5
    tie_levels: bool = False
    uniform: float = field(init=False)
    decisions: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.channels.check_budget(self.budget)
        self.uniform = float(self.channels.uniform_ratio(self.budget))
        self._uniform_candidate = self.channels.project([self.uniform] * self.n_groups, self.budget)
        self.decisions = mirrored_levels(self.groups) if self.tie_levels else tuple((i,) for i in range(self.n_groups))

    @classmethod
    def from_config(cls, role: str, cfg: RunConfig) -> "RoleSpace":
        """Trace the role's unpruned network and build its space.

        :param role: ``"generator"`` or ``"discriminator"``.
        :raises BudgetError: infeasible budget.
        """
        model, shape = role_model_and_input(role, cfg)
        r = Role.of(role, cfg)
        channels = ChannelSpace.of(r.short, model, shape, cfg.pruning)
        return cls(role=r, channels=channels, log2_range=cfg.search.log2_range(r.name),
                   tie_levels=cfg.search.tie_levels and r.leads)

    # ---------------------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        """The role's name."""
        return self.role.name

    @property
    def budget(self) -> float:
        """The budget, a fraction of the teacher's cost (physical MACs, or predicted latency)."""
        return self.role.budget

    @property
    def groups(self) -> Sequence[PrunableGroup]:
        """The prunable groups, network order."""
        return self.channels.groups

    @property
    def n_groups(self) -> int:
        """Number of prunable groups (= steps per episode)."""
        return self.channels.num_groups

    @property
    def n_decisions(self) -> int:
        """Actions per episode: one per group, or one per mirrored level with ``search.tie_levels``."""
        return len(self.decisions)

    def expand(self, values: Sequence[float]) -> list[float]:
        """Per-decision values -> per-group values (each group gets its decision's value)."""
        if len(values) != self.n_decisions:
            raise ValueError(f"{self.name}: expected {self.n_decisions} decisions, got {len(values)}")
        out = [0.0] * self.n_groups
        for value, groups in zip(values, self.decisions):
            for g in groups:
                out[g] = float(value)
        return out

    @property
    def r_min(self) -> float:
        return float(self.channels.cfg.r_min)

    @property
    def r_max(self) -> float:
        return float(self.channels.cfg.r_max)

    # ---------------------------------------------------------------------------- arithmetic
    def action_to_ratio(self, action: float) -> float:
        """Action in [-1, 1] (clipped) -> requested keep ratio ``clip(u * 2**(k * a), r_min, r_max)``."""
        a = float(np.clip(action, -1.0, 1.0))
        return float(np.clip(self.uniform * 2.0 ** (self.log2_range * a), self.r_min, self.r_max))

    def ratio_to_action(self, ratio: float) -> float:
        """Inverse of :meth:`action_to_ratio`: ``clip(log2(ratio / u) / k, -1, 1)``."""
        if self.log2_range <= 0 or ratio <= 0:
            return 0.0
        return float(np.clip(math.log2(ratio / self.uniform) / self.log2_range, -1.0, 1.0))

    def project(self, requested: Sequence[float]) -> list[float]:
        """The executed keep ratios of a finished proposal (:meth:`ChannelSpace.project` onto the budget)."""
        return self.channels.project(list(requested), self.budget)

    def uniform_candidate(self) -> list[float]:
        """The projection of the zero action: the uniform candidate the reward compares with."""
        return list(self._uniform_candidate)

    def kept(self, ratios: Sequence[float]) -> list[int]:
        """Kept channels per group for a full ratio vector (length ``n_groups``)."""
        return self.channels.kept(ratios)

    def macs_fraction(self, ratios: Sequence[float]) -> float:
        """Physical MACs of the candidate as a fraction of the teacher's (exact, via the table)."""
        return self.channels.macs_fraction(ratios)

    def budget_fraction(self, ratios: Sequence[float]) -> float:
        """The candidate's cost as a fraction of the teacher's, in the budget's unit (MACs, or
        predicted latency under a latency budget): what :attr:`budget` bounds."""
        return self.channels.cost_fraction(ratios)

    def partial_fraction(self, decided: Sequence[float]) -> float:
        """Budget fraction with ``decided`` ratios for the first decisions and the uniform ratio for the rest."""
        rest = [self.uniform] * (self.n_decisions - len(decided))
        return self.budget_fraction(self.expand(list(decided) + rest))

    def fits(self, ratios: Sequence[float]) -> bool:
        """Whether a full ratio vector is within the budget."""
        return self.budget_fraction(ratios) <= self.budget * (1 + 1e-12)

    def at_budget(self, budget: float) -> "RoleSpace":
        """The same role and channel space (shared, not traced again) at another budget fraction:
        its own uniform ratio, action map and projection.

        :raises BudgetError: the budget cannot be met even with every group at ``r_min``.
        """
        if budget == self.budget:
            return self
        return dataclasses.replace(self, role=dataclasses.replace(self.role, budget=float(budget)))

    def slot_spaces(self, cfg: RunConfig, slots: int) -> list["RoleSpace"]:
        """This role's space in each slot of a round: the generator's at the slot's budget of a
        multi-budget search (:func:`collabprune.pruning.roles.slot_budget`), the discriminator's
        (and a single-budget generator's) this one in every slot."""
        if not self.role.leads:
            return [self] * slots
        budgets = generator_budgets(cfg)
        return [self.at_budget(slot_budget(budgets, s)) for s in range(slots)]


def mirrored_levels(groups: Sequence[PrunableGroup]) -> tuple[tuple[int, ...], ...]:
    """Decisions that tie each up-sampling (ConvTranspose2d) group to the not yet tied convolution group
    of the same feature-map size before it: a U-Net's encoder and decoder levels, a ResNet's
    down- and up-sampling convolutions. Other groups stay alone; decisions follow their first group.
    """
    tied: dict[int, int] = {}
    for g in groups:
        if g.kind != "deconv":
            continue
        for h in reversed(groups[: g.index]):
            if h.kind != "deconv" and h.feature_hw == g.feature_hw and h.index not in tied and h.index not in tied.values():
                tied[h.index] = g.index
                break
    out = []
    for g in groups:
        if g.index in tied.values():
            continue
        out.append((g.index, tied[g.index]) if g.index in tied else (g.index,))
    return tuple(out)


def peer_length(spaces: Sequence[RoleSpace]) -> int:
    """Length of the fixed-size peer ratio vector: the largest group count among the roles."""
    return max(s.n_groups for s in spaces)
