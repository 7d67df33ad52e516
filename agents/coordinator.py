"""The Coordinator: pairs the agents' proposals per round, evaluates, logs, and replies.

An async Ray actor with ``num_cpus=0`` (DESIGN.md §5 pitfalls: a sync actor with max_concurrency 1
deadlocks while the first agent waits for the second; one that reserves a CPU starves the agents on
two cores). Per round ``k``:

1. each agent calls ``await submit(role, k, ratios, macs_fraction, agent_s)``;
2. when both proposals are in, the pair goes to a free evaluator of the pool (with a timeout of
   ``search.round_timeout_s``);
3. the result is appended to ``evaluations.jsonl`` (flushed and fsynced) and ``best.json`` is
   updated, BEFORE any agent sees the reward;
4. both calls return ``{"reward": team reward, "peer": the other role's PeerInfo}``.

A round already in the log (a resumed run replaying it) is answered from the log at once, without
re-evaluating and without waiting for the peer: the answer is a pure function of the logged record,
so an agent that replays a round gets exactly the reply of the original run.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from collabprune.config import RunConfig
from collabprune.errors import RunDirError
from collabprune.evaluation import reward_ratios
from collabprune.runs import TEACHER_ROUND, UNIFORM_ROUND, RunDir, candidate_dir, round_seed, run_digest
from envs.channel_env import PeerInfo
from envs.space import ROLES

_SHORT = {"generator": "g", "discriminator": "d"}


def other_role(role: str) -> str:
    """The peer of a role."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    return ROLES[1] if role == ROLES[0] else ROLES[0]


def _ratio(value: Any, base: Any) -> float:
    """value / base for reward normalisation; nan when either is missing or not finite."""
    try:
        v, b = float(value), float(base)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(v) and math.isfinite(b)):
        return math.inf if v == math.inf else math.nan
    return v / max(abs(b), 1e-8)


def normalised_terms(record: dict[str, Any], baseline: dict[str, Any]) -> tuple[float, float, float]:
    """(FID_s/FID_u, L_kde_s/L_kde_u, bal_s/bal_u) of a logged candidate: the ratios its reward was
    made of (:func:`collabprune.evaluation.reward_ratios`); ``nan`` for a diverged one.

    :param record: the candidate's evaluation record.
    :param baseline: the uniform candidate's metrics.
    """
    ratios = reward_ratios(record.get("metrics", {}), baseline)
    return ratios["fid"], ratios["kde"], ratios["bal"]


def peer_info_from_record(
    record: dict[str, Any], role: str, baseline: dict[str, Any], rho_t: float | None, exchange: bool = True,
) -> PeerInfo:
    """The peer block ``role`` sees after a logged round.

    :param record: the round's record in the evaluation log.
    :param role: the receiving agent's role; the block describes the other role's proposal.
    :param baseline: the uniform candidate's metrics (normalises the reward terms).
    :param rho_t: the teacher pair's balance statistic.
    :param exchange: ``agents.exchange``; ``False`` gives the all-zero block (the ablation).
    """
    if not exchange:
        return PeerInfo()
    peer = _SHORT[other_role(role)]
    metrics = record.get("metrics", {})
    proposal = record.get("proposals", {}).get(peer, {})
    macs_fraction = proposal.get("macs_fraction", metrics.get(f"{peer}_macs_fraction", 0.0))
    rho = metrics.get("rho")
    rho_ratio = _ratio(rho, rho_t) if rho_t is not None else math.nan
    return PeerInfo(
        ratios=tuple(float(r) for r in record[f"{peer}_ratios"]),
        macs_fraction=float(macs_fraction),
        reward_terms=normalised_terms(record, baseline),
        rho_ratio=rho_ratio if math.isfinite(rho_ratio) and rho_ratio > 0 else 0.0,
    )


@dataclass
class _Proposal:
    ratios: list[float]
    macs_fraction: float
    agent_s: float
    at: float


@dataclass
class _Round:
    proposals: dict[str, _Proposal] = field(default_factory=dict)
    done: asyncio.Future | None = None
    started: bool = False


class CoordinatorCore:
    """Body of the :data:`Coordinator` actor (all public methods are coroutines).

    The driver must have logged the teacher (round -2) and uniform (round -1) records before the
    Coordinator starts: they give ``rho_t`` and the reward baseline.

    :param cfg: the run config as plain data.
    :param run_dir: the run directory (this actor becomes the only writer of its log).
    :param evaluators: evaluator actor handles (:func:`agents.evaluator.make_evaluators`).
    :raises RunDirError: the teacher or uniform record is missing.
    """

    def __init__(self, cfg: dict[str, Any], run_dir: str, evaluators: list[Any]) -> None:
        self.cfg = RunConfig.model_validate(cfg)
        self.run = RunDir(Path(run_dir), run_digest(self.cfg))
        teacher = self.run.get(TEACHER_ROUND)
        uniform = self.run.get(UNIFORM_ROUND)
        if teacher is None or uniform is None:
            raise RunDirError(f"{run_dir}: the teacher and uniform evaluations must be logged first")
        tm = teacher.get("metrics", {})
        self.rho_t: float | None = tm.get("rho")  # the teacher's rho is rho_t
        self.baseline: dict[str, Any] = uniform["metrics"]
        self.exchange = self.cfg.agents.exchange
        self.timeout = float(self.cfg.search.round_timeout_s)
        self.evaluators = list(evaluators)
        self._free: asyncio.Queue | None = None
        self._rounds: dict[int, _Round] = {}

    # --------------------------------------------------------------------------- queries
    def _reply(self, role: str, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "round": record["round"],
            "reward": float(record["reward"]) if record.get("reward") is not None else self.cfg.reward.penalty,
            "diverged": bool(record.get("diverged", False)),
            "peer": peer_info_from_record(record, role, self.baseline, self.rho_t, self.exchange).to_dict(),
        }

    async def peer_info(self, role: str, round_index: int) -> dict[str, Any]:
        """The peer block ``role`` had after round ``round_index`` (zeros before round 0)."""
        record = self.run.get(round_index) if round_index >= 0 else None
        if record is None:
            return PeerInfo().to_dict()
        return self._reply(role, record)["peer"]

    async def logged_ratios(self, role: str) -> dict[int, list[float]]:
        """``{round: ratios of role}`` of every logged search round (what a resumed agent replays)."""
        key = f"{_SHORT[role]}_ratios"
        return {r["round"]: list(r[key]) for r in self.run.search_records()}

    async def status(self) -> dict[str, Any]:
        """Progress for the driver: rounds done, last and best record summaries."""
        records = self.run.search_records()
        best = self.run.best()
        return {
            "rounds_done": self.run.completed_rounds(),
            "last": _summary(records[-1]) if records else None,
            "best": _summary(best) if best else None,
        }

    # --------------------------------------------------------------------------- submit
    async def submit(
        self, role: str, round_index: int, ratios: list[float], macs_fraction: float, agent_s: float = 0.0
    ) -> dict[str, Any]:
        """Hand in one agent's proposal for a round; return once the pair is evaluated and logged.

        :param role: ``"generator"`` or ``"discriminator"``.
        :param round_index: the search round (0-based).
        :param ratios: the role's keep ratios (budget-corrected by its env).
        :param macs_fraction: their MACs fraction (fast estimate).
        :param agent_s: seconds the agent spent since its previous reply (policy + training).
        :returns: ``{"round", "reward", "diverged", "peer": PeerInfo.to_dict()}``.
        :raises TimeoutError: the peer or the evaluation took longer than allowed.
        """
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        logged = self.run.get(round_index)
        if logged is not None:
            return self._reply(role, logged)
        state = self._rounds.setdefault(round_index, _Round())
        if state.done is None:
            state.done = asyncio.get_running_loop().create_future()
        if not state.started:
            state.proposals[role] = _Proposal(list(ratios), float(macs_fraction), float(agent_s), time.time())
            if len(state.proposals) == len(ROLES):
                state.started = True
                asyncio.get_running_loop().create_task(self._evaluate(round_index, state))
        limit = 2 * self.timeout + 60  # the peer's turn plus one evaluation
        finished, _ = await asyncio.wait({state.done}, timeout=limit)
        if not finished:
            missing = [r for r in ROLES if r not in state.proposals]
            why = f"no proposal from {missing}" if missing else "evaluation still running"
            raise TimeoutError(f"round {round_index}: no result after {limit:.0f} s ({why})")
        return self._reply(role, state.done.result())

    async def _evaluate(self, round_index: int, state: _Round) -> None:
        assert state.done is not None
        try:
            record = await self._run_evaluation(round_index, state)
            state.done.set_result(record)
        except BaseException as err:  # noqa: BLE001 - forwarded to both agents
            state.done.set_exception(err)
        finally:
            self._rounds.pop(round_index, None)

    async def _run_evaluation(self, round_index: int, state: _Round) -> dict[str, Any]:
        if self._free is None:
            self._free = asyncio.Queue()
            for handle in self.evaluators:
                self._free.put_nowait(handle)
        g, d = state.proposals["generator"], state.proposals["discriminator"]
        seed = round_seed(self.cfg, round_index)
        handle = await self._free.get()
        t_start = time.time()
        try:
            save_dir = str(candidate_dir(self.run.path, round_index))
            ref = handle.evaluate.remote(g.ratios, d.ratios, seed, self.baseline, save_dir)
            result = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout=self.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"round {round_index}: evaluation took longer than search.round_timeout_s={self.timeout:g} s"
            ) from None
        finally:
            self._free.put_nowait(handle)
        t_end = time.time()
        record = dict(result)
        record.update(
            round=round_index,
            seed=seed,
            proposals={
                "g": {"ratios": g.ratios, "macs_fraction": g.macs_fraction},
                "d": {"ratios": d.ratios, "macs_fraction": d.macs_fraction},
            },
        )
        record.setdefault("g_ratios", g.ratios)
        record.setdefault("d_ratios", d.ratios)
        first = min(g.at, d.at)
        record["round_times"] = {
            "agents_s": max(g.agent_s, d.agent_s),
            "coordination_s": (t_start - first) + (time.time() - t_end),
            "evaluation_s": t_end - t_start,
            "finished_at": time.time(),
        }
        record = self.run.append(record)  # flushed + fsynced before any agent sees the reward
        self.run.update_best(record)
        self.run.prune_candidates()
        return record


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    m = record.get("metrics", {})
    return {
        "round": record["round"],
        "reward": record.get("reward"),
        "g_macs_fraction": m.get("g_macs_fraction"),
        "d_macs_fraction": m.get("d_macs_fraction"),
        "round_times": record.get("round_times", {}),
    }


#: The Ray actor class: async, reserves no CPU (see the module docstring).
Coordinator = ray.remote(num_cpus=0)(CoordinatorCore)
