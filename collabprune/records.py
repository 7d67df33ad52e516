"""The evaluation record: one evaluated candidate (G, D) pair, typed (DESIGN.md §5, §6).

One :class:`EvaluationRecord` is what :class:`~collabprune.evaluation.CandidateEvaluator` returns for
a candidate pair, what the Coordinator completes with the round's bookkeeping (round, slot, the
agents' proposals, timings), and what :class:`~collabprune.runs.RunDir` appends to
``evaluations.jsonl`` and writes to ``best.json``. A :class:`ReevalRecord` is one line of
``reevaluations.jsonl`` (a candidate re-evaluated under a fresh seed).

On-disk format: :meth:`EvaluationRecord.to_dict` writes exactly the JSON object the log has always
held, key for key and in the same order, so ``json.dumps(EvaluationRecord.from_dict(d).to_dict())``
equals ``json.dumps(d)`` for every line a run writes. Keys a record does not know are kept in
``extra`` and written back (after the known keys); known keys missing from an old file get their
defaults. Between Ray actors the record travels as itself (it pickles); the agents never see it, they
get the reward in the Coordinator's reply.

This module is core library code with no dependency beyond the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterable, Mapping, Sequence


def _split(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known fields, unknown keys) of ``data`` for the dataclass ``cls`` (``extra`` is not a key)."""
    names = {f.name for f in fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    return known, {k: v for k, v in data.items() if k not in names}


def finite_number(x: Any) -> float | None:
    """``x`` as a float when it is a finite int or float (not a bool), else ``None``."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _floats(values: Iterable[Any] | None) -> list[Any] | None:
    return None if values is None else list(values)


class Metrics(dict):
    """The measured numbers of one evaluation: a ``{name: value}`` mapping with typed read accessors.

    A mapping rather than a dataclass because its keys are open-ended: the FID key is ``fid`` or the
    labelled fallback ``fd_teacher_d`` (``fd_metric`` names which), a diverged candidate has no FID or
    ``l_kde`` at all and ``null`` for ``rho`` / ``bal``, and a missing key and a ``null`` one both occur
    on disk. A mapping keeps every one of those cases exactly as written; the properties give readers
    attributes and types. Values (``None`` when absent):

    - ``g_macs``, ``d_macs``: MACs of the pruned G and D, physical convention (one forward, batch 1).
    - ``g_macs_published``, ``d_macs_published``: the same in the GAN-compression papers' convention.
    - ``g_params``, ``d_params``: parameter counts.
    - ``g_macs_fraction``, ``d_macs_fraction``: MACs as a fraction of the teacher's (physical), in (0, 1].
    - ``fd_metric``: ``"fid"`` or ``"fd_teacher_d"``, the key of the Frechet distance (:attr:`fd`).
    - ``fid`` / ``fd_teacher_d``: the Frechet distance of G's outputs to the real targets (reward split).
    - ``l_kde``: the local-density objective, scale-free, in [0, 2] (0 = the teacher's neighbourhoods).
    - ``rho``: mean D loss / mean G adversarial loss over the balance window of fine-tuning.
    - ``bal``: ``|log(rho / rho_t)|`` (0 for the teacher).
    - ``l1``: paired data, the mean absolute difference of G's outputs to the reward split's targets.
    - ``pull``: paired data, D's adversarial pull on those outputs (:mod:`collabprune.objectives.pull`).
    """

    def number(self, key: str) -> float | None:
        """``self[key]`` as a float when it is a finite number, else ``None``."""
        return finite_number(self.get(key))

    @property
    def fd_metric(self) -> str:
        return str(self.get("fd_metric", "fid"))

    @property
    def fd(self) -> float | None:
        """The Frechet distance under its own name (``fid`` or ``fd_teacher_d``)."""
        return self.get(self.fd_metric)

    @property
    def fid(self) -> float | None:
        return self.get("fid")

    @property
    def fd_teacher_d(self) -> float | None:
        return self.get("fd_teacher_d")

    @property
    def l_kde(self) -> float | None:
        return self.get("l_kde")

    @property
    def rho(self) -> float | None:
        return self.get("rho")

    @property
    def bal(self) -> float | None:
        return self.get("bal")

    @property
    def g_macs(self) -> int | None:
        return self.get("g_macs")

    @property
    def d_macs(self) -> int | None:
        return self.get("d_macs")

    @property
    def g_macs_published(self) -> int | None:
        return self.get("g_macs_published")

    @property
    def d_macs_published(self) -> int | None:
        return self.get("d_macs_published")

    @property
    def g_params(self) -> int | None:
        return self.get("g_params")

    @property
    def d_params(self) -> int | None:
        return self.get("d_params")

    @property
    def g_macs_fraction(self) -> float | None:
        return self.get("g_macs_fraction")

    @property
    def d_macs_fraction(self) -> float | None:
        return self.get("d_macs_fraction")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict copy (same keys, same order)."""
        return dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Metrics":
        return data if isinstance(data, Metrics) else cls(data or {})


@dataclass
class EvalTimes:
    """Seconds one evaluation spent, by stage (``times`` on disk); ``None`` = not measured.

    :param prune_s: pruning and adaptive-BN recalibration.
    :param finetune_s: fine-tuning.
    :param fid_s: generating the reward split, the Frechet distance and (paired data) the adversarial pull.
    :param kde_s: the L_kde objective.
    :param total_s: the whole evaluation (at least the sum of the others).
    :param extra: keys not known here, kept as read.
    """

    prune_s: float | None = None
    finetune_s: float | None = None
    fid_s: float | None = None
    kde_s: float | None = None
    total_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "EvalTimes":
        known, extra = _split(cls, data or {})
        return cls(**known, extra=extra)

    @classmethod
    def total(cls, parts: Sequence["EvalTimes"]) -> "EvalTimes":
        """The stage-by-stage sum of several evaluations' times (the stages the first one measured)."""
        first = parts[0].to_dict()
        return cls.from_dict({k: sum(p.to_dict().get(k, 0.0) for p in parts) for k in first})


@dataclass
class RoundTimes:
    """Where the wall time of a search round went, seen by the Coordinator (``round_times``; seconds).

    :param agents_s: the slower agent's time since its previous reply (policy steps + training).
    :param coordination_s: waiting for the peer's proposals and logging, outside the evaluation.
    :param evaluation_s: the evaluator call, Ray included.
    :param finished_at: Unix time when the record was complete.
    """

    agents_s: float = 0.0
    coordination_s: float = 0.0
    evaluation_s: float = 0.0
    finished_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"agents_s": self.agents_s, "coordination_s": self.coordination_s, "evaluation_s": self.evaluation_s}
        if self.finished_at is not None:
            out["finished_at"] = self.finished_at
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoundTimes":
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)


@dataclass
class ProposalInfo:
    """One agent's proposal behind a logged pair (``proposals["g"]`` / ``proposals["d"]``).

    :param requested: keep ratios as the policy asked, before the budget projection (``None``: not kept).
    :param actions: the policy's actions in [-1, 1] (log2 multipliers on the uniform ratio / k); what a
        resumed agent replays.
    :param macs_fraction: the executed proposal's MACs as a fraction of the teacher's.
    """

    requested: list[float] | None = None
    actions: list[float] | None = None
    macs_fraction: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"requested": self.requested, "actions": self.actions, "macs_fraction": self.macs_fraction}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProposalInfo":
        known, extra = _split(cls, data)
        return cls(requested=_floats(known.get("requested")), actions=_floats(known.get("actions")),
                   macs_fraction=known.get("macs_fraction"), extra=extra)


@dataclass
class SeedResult:
    """One seed of the uniform candidate's seed-averaged baseline (``seed_results``).

    :param seed: the evaluation seed.
    :param metrics: that seed's metrics.
    :param diverged: whether fine-tuning diverged under that seed.
    """

    seed: int
    metrics: Metrics
    diverged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "metrics": self.metrics.to_dict(), "diverged": self.diverged}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SeedResult":
        return cls(seed=data["seed"], metrics=Metrics.from_dict(data.get("metrics")),
                   diverged=bool(data.get("diverged", False)))


@dataclass
class ReevalCandidate:
    """One contender of the top-k re-evaluation (``reeval["candidates"]``).

    :param round: its round (-1 = the uniform candidate).
    :param slot: its slot.
    :param search_reward: its reward in the search.
    :param reward: the mean of ``rewards``.
    :param rewards: its reward under each fresh seed (paired with uniform under the same seed).
    """

    round: int
    slot: int = 0
    search_reward: float | None = None
    reward: float | None = None
    rewards: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "slot": self.slot, "search_reward": self.search_reward,
                "reward": self.reward, "rewards": list(self.rewards)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReevalCandidate":
        return cls(round=data["round"], slot=data.get("slot", 0), search_reward=data.get("search_reward"),
                   reward=data.get("reward"), rewards=list(data.get("rewards", [])))


@dataclass
class Reeval:
    """The top-k re-evaluation that chose ``best.json`` (its ``reeval``; rewards as in the search).

    :param seeds: the fresh seeds.
    :param rewards: the winner's reward under each seed.
    :param reward: the winner's mean re-evaluated reward.
    :param search_reward: the winner's reward in the search.
    :param uniform_reward: the uniform candidate's mean re-evaluated reward.
    :param candidates: every contender, uniform first.
    """

    seeds: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    reward: float | None = None
    search_reward: float | None = None
    uniform_reward: float | None = None
    candidates: list[ReevalCandidate] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "rewards": list(self.rewards), "reward": self.reward,
                "search_reward": self.search_reward, "uniform_reward": self.uniform_reward,
                "candidates": [c.to_dict() for c in self.candidates], **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Reeval":
        known, extra = _split(cls, data)
        known["candidates"] = [ReevalCandidate.from_dict(c) for c in known.get("candidates", [])]
        return cls(**known, extra=extra)


@dataclass
class EvaluationRecord:
    """One evaluated candidate pair: a line of ``evaluations.jsonl``, or ``best.json``.

    Identity (``None`` until :meth:`collabprune.runs.RunDir.append` stamps it, and then not written):

    :param round: ``-2`` the teacher pair, ``-1`` the uniform candidate, ``>= 0`` a search round
        (:func:`collabprune.runs.round_kind`).
    :param slot: the candidate's slot in its round (``0 .. slots-1``; 0 for teacher and uniform).
    :param kind: ``"teacher"``, ``"uniform"`` or ``"search"`` (from ``round``).
    :param seed: the evaluation seed (fine-tuning batches, perturbations, dropout).
    :param digest: the run digest (:func:`collabprune.runs.run_digest`).

    What the evaluator measured (always written):

    :param g_ratios: keep ratio per generator group (network order), each in (0, 1].
    :param d_ratios: keep ratio per discriminator group.
    :param g_channels: channels kept per generator group.
    :param d_channels: channels kept per discriminator group.
    :param metrics: see :class:`Metrics` (MACs fractions of the teacher, FD, L_kde, rho, bal).
    :param reward: the team reward (DESIGN.md §4), ``None`` for the teacher; the penalty when diverged.
    :param reward_terms: the weighted terms ``{"fid", "kde", "bal"}`` (``reward = -sum``), ``{}`` for
        the teacher, ``{"penalty": p}`` for a diverged candidate.
    :param diverged: fine-tuning produced NaN/inf, or a score is not finite.
    :param times: seconds per stage of the evaluation.

    Written only when present (``None`` = absent):

    :param seed_results: the uniform candidate's per-seed metrics (its ``metrics`` are their means).
    :param proposals: per role short name (``"g"``, ``"d"``) the proposal behind a search record.
    :param budget: the generator budget the candidate was searched at, a fraction of the teacher's G
        MACs (a multi-budget search, ``search.budgets``, only; a single-budget run has one).
    :param round_times: the Coordinator's timing of the round (search records of an agent search).
    :param reeval: the top-k re-evaluation (``best.json`` after the search only).
    :param extra: keys not known here, kept as read and written back after the known ones.
    """

    round: int | None = None
    slot: int | None = None
    kind: str | None = None
    seed: int | None = None
    digest: str | None = None
    g_ratios: list[float] = field(default_factory=list)
    d_ratios: list[float] = field(default_factory=list)
    g_channels: list[int] = field(default_factory=list)
    d_channels: list[int] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    reward: float | None = None
    reward_terms: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    times: EvalTimes = field(default_factory=EvalTimes)
    seed_results: list[SeedResult] | None = None
    proposals: dict[str, ProposalInfo] | None = None
    budget: float | None = None
    round_times: RoundTimes | None = None
    reeval: Reeval | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    #: fields left out of :meth:`to_dict` when ``None``
    OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"round", "slot", "kind", "seed", "digest", "seed_results", "proposals", "budget", "round_times", "reeval"})

    def __post_init__(self) -> None:
        if not isinstance(self.metrics, Metrics):
            self.metrics = Metrics.from_dict(self.metrics)

    def ratios(self, short: str) -> list[float]:
        """``g_ratios`` or ``d_ratios`` by role short name (``"g"`` / ``"d"``)."""
        return {"g": self.g_ratios, "d": self.d_ratios}[short]

    def channels(self, short: str) -> list[int]:
        """``g_channels`` or ``d_channels`` by role short name."""
        return {"g": self.g_channels, "d": self.d_channels}[short]

    def proposal(self, short: str) -> ProposalInfo | None:
        """The proposal of role ``short`` behind this record, or ``None``."""
        return (self.proposals or {}).get(short)

    @property
    def finite_reward(self) -> float | None:
        """``reward`` when it is a finite number, else ``None``."""
        return finite_number(self.reward)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the log line (see the module docstring)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OPTIONAL):
                continue
            if f.name in ("g_ratios", "d_ratios", "g_channels", "d_channels"):
                value = list(value)
            elif f.name == "reward_terms":
                value = dict(value)
            elif f.name in ("metrics", "times", "round_times", "reeval"):
                value = value.to_dict()
            elif f.name == "seed_results":
                value = [s.to_dict() for s in value]
            elif f.name == "proposals":
                value = {k: p.to_dict() for k, p in value.items()}
            out[f.name] = value
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationRecord":
        """A record from its JSON object; unknown keys go to ``extra``, missing ones get defaults."""
        known, extra = _split(cls, data)
        for key in ("g_ratios", "d_ratios", "g_channels", "d_channels"):
            known[key] = list(known.get(key) or [])
        known["metrics"] = Metrics.from_dict(known.get("metrics"))
        known["reward_terms"] = dict(known.get("reward_terms") or {})
        known["diverged"] = bool(known.get("diverged", False))
        known["times"] = EvalTimes.from_dict(known.get("times"))
        if known.get("seed_results") is not None:
            known["seed_results"] = [SeedResult.from_dict(s) for s in known["seed_results"]]
        if known.get("proposals") is not None:
            known["proposals"] = {k: ProposalInfo.from_dict(p) for k, p in known["proposals"].items()}
        if known.get("round_times") is not None:
            known["round_times"] = RoundTimes.from_dict(known["round_times"])
        if known.get("reeval") is not None:
            known["reeval"] = Reeval.from_dict(known["reeval"])
        return cls(**known, extra=extra)


@dataclass
class ReevalRecord:
    """One candidate re-evaluated under one fresh seed: a line of ``reevaluations.jsonl``.

    :param round: the candidate's round (-1 = the uniform candidate).
    :param slot: its slot.
    :param seed: the fresh seed (:func:`collabprune.selection.reeval_seeds`).
    :param metrics: the metrics under that seed (see :class:`Metrics`).
    :param diverged: whether fine-tuning diverged.
    :param g_ratios: the candidate's generator keep ratios.
    :param d_ratios: its discriminator keep ratios.
    :param digest: the run digest (stamped by :meth:`collabprune.runs.RunDir.append_reeval`).
    :param extra: keys not known here, kept as read.
    """

    round: int
    slot: int
    seed: int
    metrics: Metrics = field(default_factory=Metrics)
    diverged: bool = False
    g_ratios: list[float] = field(default_factory=list)
    d_ratios: list[float] = field(default_factory=list)
    digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.metrics, Metrics):
            self.metrics = Metrics.from_dict(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round, "slot": self.slot, "seed": self.seed,
                               "metrics": self.metrics.to_dict(), "diverged": self.diverged,
                               "g_ratios": list(self.g_ratios), "d_ratios": list(self.d_ratios)}
        if self.digest is not None:
            out["digest"] = self.digest
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReevalRecord":
        """:raises KeyError: no ``round`` or ``seed``."""
        known, extra = _split(cls, data)
        known.setdefault("slot", 0)
        known["metrics"] = Metrics.from_dict(known.get("metrics"))
        known["diverged"] = bool(known.get("diverged", False))
        return cls(**known, extra=extra)


__all__ = ["EvalTimes", "EvaluationRecord", "Metrics", "ProposalInfo", "Reeval", "ReevalCandidate", "ReevalRecord",
           "RoundTimes", "SeedResult", "finite_number"]
