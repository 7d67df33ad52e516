"""The two roles of a search, generator and discriminator, as one type (DESIGN.md §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, TypeVar

if TYPE_CHECKING:
    from collabprune.config import RunConfig

#: Role names in the order agents propose within a round: G first, then D (which sees G's proposal).
ROLE_NAMES: tuple[str, str] = ("generator", "discriminator")
_SHORT = {"generator": "g", "discriminator": "d"}
_B = TypeVar("_B")  # a budget fraction, or what a record carries as its budget (None: single budget)


@dataclass(frozen=True)
class Role:
    """One role of a run: which network, its peer, the input it is traced with and its MACs budget.

    :param name: ``"generator"`` or ``"discriminator"``.
    :param short: ``"g"`` or ``"d"`` (keys of ratio vectors in records: ``g_ratios``, ``d_ratios``).
    :param peer: the other role's name.
    :param input_shape: (1, C, H, W) the network is traced and its MACs counted with; the pix2pix D
        sees ``cat(input, output)``, so C = input_nc + output_nc; CycleGAN's D_B C = output_nc.
    :param budget: the budget as a fraction of the teacher's cost: physical MACs, or for a generator
        latency budget, ``latency_ms`` over the teacher's latency predicted by the run's latency model
        (capped at 1: a target above the teacher's latency keeps everything).
    """

    name: str
    short: str
    peer: str
    input_shape: tuple[int, int, int, int]
    budget: float

    @classmethod
    def of(cls, name: str, cfg: "RunConfig") -> "Role":
        """The role ``name`` of a run config.

        :raises ValueError: unknown role name.
        :raises ConfigError: a generator latency budget whose latency model is not measured yet or unreadable.
        """
        if name not in ROLE_NAMES:
            raise ValueError(f"role {name!r} is not one of {ROLE_NAMES}")
        size = cfg.data.crop_size
        if name == "generator":
            shape = (1, cfg.data.input_nc, size, size)
            budget = generator_budget_fraction(cfg)
        else:
            from collabprune.models.family import family_of

            shape = (1, family_of(cfg).d_input_nc(cfg.data.input_nc, cfg.data.output_nc), size, size)
            budget = cfg.pruning.budget.discriminator
        peer = ROLE_NAMES[1] if name == ROLE_NAMES[0] else ROLE_NAMES[0]
        return cls(name=name, short=_SHORT[name], peer=peer, input_shape=shape, budget=float(budget))

    @property
    def leads(self) -> bool:
        """Whether this role proposes first in a round (the generator); the other sees its proposal."""
        return self.name == ROLE_NAMES[0]


def generator_budget_fraction(cfg: "RunConfig") -> float:
    """The generator's budget as a fraction of the teacher's cost (see :attr:`Role.budget`).

    :raises ConfigError: a latency budget whose latency model is not measured yet or unreadable.
    """
    from collabprune.config import LatencyBudget

    budget = cfg.pruning.budget.generator
    if not isinstance(budget, LatencyBudget):
        return float(budget)
    from collabprune.pruning.latency_model import load_latency_model

    model = load_latency_model(cfg.pruning.latency_model)
    return min(1.0, budget.latency_ms / model.teacher_predicted_ms)


def generator_budgets(cfg: "RunConfig") -> tuple[float, ...]:
    """The generator budgets a search covers, the primary one first (:func:`generator_budget_fraction`),
    then the other ``search.budgets`` in the order given. Slot ``s`` of every round searches
    ``generator_budgets(cfg)[s % K]`` (:func:`slot_budget`); a single-budget run has one.

    :raises ConfigError: as :func:`generator_budget_fraction`.
    """
    primary = generator_budget_fraction(cfg)
    return (primary, *[float(b) for b in (cfg.search.budgets or ()) if float(b) != primary])


def record_budgets(cfg: "RunConfig") -> tuple[float | None, ...]:
    """What the records of each budget carry as ``budget``: :func:`generator_budgets` for a
    multi-budget search, ``(None,)`` for a single-budget run (its log stays as it was)."""
    return generator_budgets(cfg) if cfg.search.budgets is not None else (None,)


def slot_budget(budgets: Sequence[_B], slot: int) -> _B:
    """The generator budget searched in ``slot`` of every round: ``budgets[slot % len(budgets)]``."""
    return budgets[slot % len(budgets)]


def run_slots(evaluators: int, n_budgets: int) -> int:
    """Candidates per round of a run: the evaluator count rounded up to a multiple of the number of
    budgets, so that every round searches every budget equally often (at least one slot each)."""
    return n_budgets * max(1, math.ceil(evaluators / n_budgets))


def roles(cfg: "RunConfig") -> tuple[Role, Role]:
    """Both roles of a run config, generator first."""
    return Role.of(ROLE_NAMES[0], cfg), Role.of(ROLE_NAMES[1], cfg)


def short_name(name: str) -> str:
    """``"g"`` / ``"d"`` for a role name.

    :raises ValueError: unknown role name.
    """
    if name not in _SHORT:
        raise ValueError(f"role {name!r} is not one of {ROLE_NAMES}")
    return _SHORT[name]


def full_name(short: str) -> str:
    """``"generator"`` / ``"discriminator"`` for ``"g"`` / ``"d"`` (the inverse of :func:`short_name`).

    :raises ValueError: unknown short name.
    """
    for name, s in _SHORT.items():
        if s == short:
            return name
    raise ValueError(f"role short name {short!r} is not one of {tuple(_SHORT.values())}")
