"""The Coordinator: pairs the agents' proposals of each round, evaluates them, logs them and replies.

One round, top to bottom (N = slots = candidates per round; G leads, D follows). In a multi-budget
search (``search.budgets``, K budgets) slot s searches generator budget s mod K: its G env projects
onto that budget, its reward is against that budget's uniform candidate (round -1, slot s mod K),
and its record carries the budget.

1. The G agent's N envs finish their episodes; its :class:`~agents.vec_env.RoundVecEnv` calls
   ``await submit("generator", k, proposals)`` with the N projected G proposals. They are stored.
2. The D agent, starting round k, calls ``await peers("discriminator", k)``: it waits until G's
   proposals of round k are in and gets, per slot, G's proposal (as actions, ``same_round=1``), its
   MACs fraction and the previous round's reward terms and balance (with ``agents.exchange: false``
   an all-zero block, and it does not wait). The G agent's ``peers("generator", k)`` answers at once
   with D's proposal and the outcome of round k-1.
3. The D envs finish; ``await submit("discriminator", k, proposals)``. Both sides are in: the N pairs
   go to free evaluators of the pool concurrently (each with ``search.round_timeout_s``).
4. Each pair's result is appended to ``evaluations.jsonl`` as (k, slot) (flushed and fsynced; results
   that finish together share one write) and ``best.json`` is updated BEFORE any agent sees a reward.
5. Both ``submit`` calls return the N rewards and the peer blocks of round k+1: the team rewards, and for
   D ``w_team_d * reward - w_pull_d * t_pull`` (paired data by default ``-t_pull``, D's adversarial pull;
   unpaired data the team reward: ``reward.w_team_d`` / ``reward.w_pull_d``, RunConfig._d_agent_reward).
6. Each agent stores round k's transitions and learns: with fewer than 4 candidates evaluated at once
   SB3 takes its gradient steps now, by default, before the agent's episodes of round k+1 (they sit
   between two rounds' evaluations); from 4 (or with ``agents.learn_during_evaluation: true``) the agent
   takes them right after its ``submit`` of round k+1, while that round is evaluated
   (:func:`agents.learners.learns_during_evaluation`).

A round already in the log (a resumed run replaying it) is answered from the log, evaluation by
evaluation, without re-evaluating: the answer is a pure function of the logged records, so a replaying
agent gets exactly the replies of the original run.

An async Ray actor with ``num_cpus=0`` (DESIGN.md §5 pitfalls: a sync actor with max_concurrency 1
deadlocks while one agent waits for the other; one that reserves a CPU starves the agents on two cores).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from collabprune.config import RunConfig
from collabprune.errors import RunDirError, SpaceMismatchError
from collabprune.evaluation import discriminator_reward, reward_ratios
from collabprune.pruning.roles import ROLE_NAMES, Role, generator_budgets, record_budgets, slot_budget
from collabprune.records import EvaluationRecord, Metrics, ProposalInfo, RoundTimes, finite_number
from collabprune.runs import TEACHER_ROUND, UNIFORM_ROUND, RunDir, candidate_dir, round_seed, run_digest
from envs.channel_env import PeerInfo
from envs.space import RoleSpace


@dataclass(frozen=True)
class Deadlines:
    """Every wait of a round, in one place (seconds).

    :param evaluation_s: one pair's evaluation (``search.round_timeout_s``).
    :param peer_s: a D agent waiting for G's proposals of the round: G's episode plus, before it, the
        previous round's evaluation and G's training.
    :param reply_s: an agent waiting for its round's rewards: the peer's turn plus the evaluations.
    :param agent_call_s: an agent's Ray call to the Coordinator (``reply_s`` plus the call itself).
    :param stall_s: the driver giving up when no evaluation finishes (``reply_s`` plus a margin for
        an agent restarted from its checkpoint to replay to the current round).
    """

    evaluation_s: float
    peer_s: float
    reply_s: float
    agent_call_s: float
    stall_s: float

    @classmethod
    def of(cls, cfg: RunConfig) -> "Deadlines":
        """The deadlines of a run: all follow ``search.round_timeout_s`` (T): peer 2T + 600 s, reply
        3T + 600 s, agent call reply + 60 s, stall reply + 300 s."""
        t = float(cfg.search.round_timeout_s)
        reply = 3 * t + 600.0
        return cls(evaluation_s=t, peer_s=2 * t + 600.0, reply_s=reply, agent_call_s=reply + 60.0,
                   stall_s=reply + 300.0)


def reward_terms(record: EvaluationRecord, baseline: Metrics, c_max: float) -> tuple[float, float, float]:
    """The (fid, kde, bal) terms ``clip(x_s / x_u, 0, c_max)`` of a logged candidate's reward
    (:func:`collabprune.evaluation.reward_ratios`); ``nan`` for a diverged one."""
    r = reward_ratios(record.metrics, baseline, c_max)
    return r["fid"], r["kde"], r["bal"]


class PeerBlocks:
    """The peer blocks of a run, computed from its log (shared by the Coordinator and ``inspect``).

    :param cfg: the run config (``agents.exchange``, ``reward.c_max``).
    :param run: the run directory (teacher and uniform records logged).
    :param spaces: both roles' :class:`RoleSpace` (actions of the peer's ratios, MACs fractions).
    :raises RunDirError: the teacher or a uniform record is missing.
    """

    def __init__(self, cfg: RunConfig, run: RunDir, spaces: dict[str, RoleSpace]) -> None:
        teacher = run.get(TEACHER_ROUND)
        budgets = generator_budgets(cfg)
        uniform = [run.get(UNIFORM_ROUND, slot=k) for k in range(len(budgets))]
        if teacher is None or any(u is None for u in uniform):
            raise RunDirError(f"{run.path}: the teacher and uniform evaluations must be logged first")
        self.cfg = cfg
        self.run = run
        self.spaces = spaces
        #: per slot, each role's space (a multi-budget generator's at the slot's budget)
        self.slot_spaces = {name: space.slot_spaces(cfg, run.slots) for name, space in spaces.items()}
        self.rho_t: float | None = teacher.metrics.rho  # the teacher's rho is rho_t
        #: per budget (``generator_budgets`` order), the uniform candidate's metrics: the reward baseline
        self.baselines: list[Metrics] = [u.metrics for u in uniform if u is not None]
        #: per slot, the generator budget it searches (``None`` for a single-budget run's records)
        self.slot_budgets: list[float | None] = [slot_budget(record_budgets(cfg), s) for s in range(run.slots)]
        self.exchange = cfg.agents.exchange

    def baseline(self, slot: int) -> Metrics:
        """The reward baseline of a slot: the uniform candidate's metrics at the slot's budget."""
        return self.baselines[slot % len(self.baselines)]

    def outcome(self, round_index: int, slot: int) -> tuple[tuple[float, float, float], float]:
        """(reward terms, rho_s / rho_t) of a logged evaluation; zeros when there is none."""
        record = self.run.get(round_index, slot=slot) if round_index >= 0 else None
        if record is None or record.diverged:
            return (0.0, 0.0, 0.0), 0.0
        terms = reward_terms(record, self.baseline(slot), self.cfg.reward.c_max)
        rho, rho_t = finite_number(record.metrics.rho), finite_number(self.rho_t)
        ratio = rho / rho_t if rho is not None and rho_t else 0.0
        clean = tuple(t if math.isfinite(t) else 0.0 for t in terms)
        return clean, ratio if ratio > 0 else 0.0  # type: ignore[return-value]

    def block(self, role: str, round_index: int, slot: int, peer_ratios: list[float] | None,
              same_round: bool) -> PeerInfo:
        """The peer block ``role`` sees when proposing ``round_index`` in ``slot``.

        :param peer_ratios: the peer's (executed) ratios it describes, or ``None`` when unknown.
        :param same_round: whether they are the peer's proposal for ``round_index`` itself.
        """
        if not self.exchange:
            return PeerInfo()
        peer = Role.of(role, self.cfg).peer
        terms, rho_ratio = self.outcome(round_index - 1, slot)
        if peer_ratios is None:
            return PeerInfo(reward_terms=terms, rho_ratio=rho_ratio)
        space = self.slot_spaces[peer][slot]
        actions = tuple(space.ratio_to_action(r) for r in peer_ratios)
        return PeerInfo(actions=actions, macs_fraction=space.budget_fraction(peer_ratios), budget=space.budget,
                        reward_terms=terms, rho_ratio=rho_ratio, same_round=1.0 if same_round else 0.0)


@dataclass
class _Round:
    proposals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    proposed: dict[str, asyncio.Event] = field(default_factory=dict)
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
        import torch

        torch.set_num_threads(1)
        self.cfg = RunConfig.model_validate(cfg)
        self.run = RunDir(Path(run_dir), run_digest(self.cfg))
        self.blocks = PeerBlocks(self.cfg, self.run, {name: RoleSpace.from_config(name, self.cfg) for name in ROLE_NAMES})
        self.exchange = self.cfg.agents.exchange
        self.deadlines = Deadlines.of(self.cfg)
        self.slots = self.run.slots
        self.evaluators = list(evaluators)
        self._free: asyncio.Queue | None = None
        self._rounds: dict[int, _Round] = {}
        self._to_log: list[tuple[EvaluationRecord, asyncio.Future]] = []
        self._log_writer: asyncio.Task | None = None
        #: roles without an agent propose their uniform candidate every round (``search.agents``)
        self.fixed: dict[str, list[float]] = {}
        if self.cfg.search.agents == "generator":
            d = self.blocks.spaces["discriminator"]
            self.fixed["discriminator"] = d.uniform_candidate()

    def peer_block(self, role: str, round_index: int, slot: int, peer_ratios: list[float] | None,
                   same_round: bool) -> PeerInfo:
        """:meth:`PeerBlocks.block` of this run."""
        return self.blocks.block(role, round_index, slot, peer_ratios, same_round)

    async def peers(self, role: str, round_index: int) -> list[dict[str, Any]]:
        """The peer block of every slot for ``role`` proposing ``round_index`` (``PeerInfo.to_dict``).

        The generator gets the discriminator's previous proposal at once; the discriminator waits
        for the generator's proposals of this round (logged ones when the round is in the log).

        :raises TimeoutError: the generator's proposals did not come within the deadline.
        """
        _check_role(role)
        peer_short = Role.of(Role.of(role, self.cfg).peer, self.cfg).short
        leads = Role.of(role, self.cfg).leads
        out = []
        if leads or not self.exchange:
            for slot in range(self.slots):
                prev = self.run.get(round_index - 1, slot=slot) if round_index > 0 else None
                ratios = (prev.ratios(peer_short) or None) if prev else None
                out.append(self.peer_block(role, round_index, slot, ratios, same_round=False).to_dict())
            return out
        logged = self.run.round_records(round_index)
        if all(r is not None for r in logged):
            g = [r.ratios(peer_short) for r in logged if r is not None]
        else:
            state = self._state(round_index)
            event = state.proposed.setdefault(Role.of(role, self.cfg).peer, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout=self.deadlines.peer_s)
            except asyncio.TimeoutError:
                raise TimeoutError(f"round {round_index}: no generator proposal within {self.deadlines.peer_s:.0f} s "
                                   "(search.round_timeout_s sets it)") from None
            g = [p["ratios"] for p in state.proposals[Role.of(role, self.cfg).peer]]
        return [self.peer_block(role, round_index, s, g[s], same_round=True).to_dict() for s in range(self.slots)]

    # --------------------------------------------------------------------------- queries
    async def logged_proposals(self, role: str) -> dict[int, dict[int, dict[str, Any]]]:
        """``{slot: {round: {"ratios": executed, "actions": as taken}}}`` of ``role`` in every logged
        search evaluation (what a resumed agent replays)."""
        short = Role.of(role, self.cfg).short
        out: dict[int, dict[int, dict[str, Any]]] = {s: {} for s in range(self.slots)}
        for r in self.run.search_records():
            proposal = r.proposal(short)
            asked = proposal.actions if proposal is not None else None
            out[r.slot or 0][int(r.round or 0)] = {"ratios": list(r.ratios(short)), "actions": asked}
        return out

    async def status(self) -> dict[str, Any]:
        """Progress for the driver: rounds done, last and best record summaries."""
        records = self.run.search_records()
        best = self.run.best()
        return {
            "rounds_done": self.run.completed_rounds(),
            "evaluations": len(records),
            "last": _summary(records[-1]) if records else None,
            "best": _summary(best) if best else None,
        }

    # --------------------------------------------------------------------------- submit
    def _state(self, round_index: int) -> _Round:
        state = self._rounds.setdefault(round_index, _Round())
        if state.done is None:
            state.done = asyncio.get_running_loop().create_future()
        return state

    def _reply(self, role: str, round_index: int, records: list[EvaluationRecord]) -> list[dict[str, Any]]:
        """Each slot's reward and the peer block of the next round, for ``role``: the team reward, for the
        discriminator :func:`~collabprune.evaluation.discriminator_reward` of it."""
        peer_short = Role.of(Role.of(role, self.cfg).peer, self.cfg).short
        out = []
        for slot, record in enumerate(records):
            reward = record.finite_reward
            if reward is not None and role == "discriminator":
                reward = discriminator_reward(reward, record.metrics, self.blocks.baseline(slot), self.cfg)
            block = self.peer_block(role, round_index + 1, slot, record.ratios(peer_short) or None, same_round=False)
            out.append({"reward": reward if reward is not None else self.cfg.reward.penalty,
                        "diverged": record.diverged, "peer": block.to_dict()})
        return out

    async def submit(self, role: str, round_index: int, proposals: list[dict[str, Any]],
                     agent_s: float = 0.0) -> list[dict[str, Any]]:
        """Hand in one role's N proposals of a round; return once every pair is evaluated and logged.

        :param role: ``"generator"`` or ``"discriminator"``.
        :param round_index: the search round (0-based).
        :param proposals: one per slot: ``{"ratios": executed ratios, "requested": ..., "macs_fraction": ...}``.
        :param agent_s: seconds the agent spent since its previous reply (policy + training).
        :returns: per slot ``{"reward", "diverged", "peer": PeerInfo.to_dict() for the next round}``.
        :raises TimeoutError: the peer or an evaluation took longer than allowed.
        :raises ValueError: wrong role or number of proposals.
        :raises SpaceMismatchError: a proposal was made in a channel space other than this run's.
        """
        _check_role(role)
        expected = self.blocks.spaces[role].channels.digest
        for slot, p in enumerate(proposals):
            if p.get("space_digest") != expected:
                raise SpaceMismatchError(
                    f"round {round_index} slot {slot}: the {role} agent's channel space {p.get('space_digest')} is not "
                    f"the Coordinator's {expected}", hint="run one collabprune version on every node of the cluster")
        if len(proposals) != self.slots:
            raise ValueError(f"{role}: {len(proposals)} proposals for a round of {self.slots} slot(s)")
        logged = self.run.round_records(round_index)
        if all(r is not None for r in logged):
            return self._reply(role, round_index, logged)  # type: ignore[arg-type]
        state = self._state(round_index)
        if not state.started:
            state.proposals[role] = [dict(p, agent_s=float(agent_s), at=time.time()) for p in proposals]
            state.proposed.setdefault(role, asyncio.Event()).set()
            for other, ratios in self.fixed.items():
                space = self.blocks.spaces[other]
                state.proposals[other] = [{"ratios": ratios, "requested": ratios, "actions": [0.0] * len(ratios),
                                           "macs_fraction": space.macs_fraction(ratios), "agent_s": 0.0,
                                           "at": time.time()} for _ in range(self.slots)]
            if len(state.proposals) == len(ROLE_NAMES):
                state.started = True
                asyncio.get_running_loop().create_task(self._evaluate_round(round_index, state))
        assert state.done is not None
        finished, _ = await asyncio.wait({state.done}, timeout=self.deadlines.reply_s)
        if not finished:
            missing = [r for r in ROLE_NAMES if r not in state.proposals]
            why = f"no proposal from {missing}" if missing else "evaluation still running"
            raise TimeoutError(f"round {round_index}: no result after {self.deadlines.reply_s:.0f} s ({why})")
        return self._reply(role, round_index, state.done.result())

    async def _evaluate_round(self, round_index: int, state: _Round) -> None:
        assert state.done is not None
        try:
            records = await asyncio.gather(*[self._evaluate_slot(round_index, s, state) for s in range(self.slots)])
            state.done.set_result(list(records))
        except BaseException as err:  # noqa: BLE001 - forwarded to both agents
            state.done.set_exception(err)
        finally:
            self._rounds.pop(round_index, None)

    async def _evaluate_slot(self, round_index: int, slot: int, state: _Round) -> EvaluationRecord:
        logged = self.run.get(round_index, slot=slot)
        if logged is not None:  # evaluated before a kill; never repeated
            return logged
        if self._free is None:
            self._free = asyncio.Queue()
            for handle in self.evaluators:
                self._free.put_nowait(handle)
        g, d = state.proposals["generator"][slot], state.proposals["discriminator"][slot]
        seed = round_seed(self.cfg, round_index)
        handle = await self._free.get()
        t_start = time.time()
        try:
            save_dir = str(candidate_dir(self.run.path, round_index, slot))
            ref = handle.evaluate.remote(g["ratios"], d["ratios"], seed, self.blocks.baseline(slot), save_dir)
            result = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout=self.deadlines.evaluation_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"round {round_index} slot {slot}: evaluation took longer than "
                               f"search.round_timeout_s={self.deadlines.evaluation_s:g} s") from None
        finally:
            self._free.put_nowait(handle)
        t_end = time.time()
        first = min(g["at"], d["at"])
        record = dataclasses.replace(
            result,
            round=round_index,
            slot=slot,
            seed=seed,
            g_ratios=g["ratios"],
            d_ratios=d["ratios"],
            budget=self.blocks.slot_budgets[slot],
            proposals={
                short: ProposalInfo(requested=p.get("requested"), actions=p.get("actions"), macs_fraction=p["macs_fraction"])
                for short, p in (("g", g), ("d", d))
            },
            round_times=RoundTimes(
                agents_s=max(g["agent_s"], d["agent_s"]),
                coordination_s=(t_start - first) + (time.time() - t_end),
                evaluation_s=t_end - t_start,
                finished_at=time.time(),
            ),
        )
        return await self._log(record)

    async def _log(self, record: EvaluationRecord) -> EvaluationRecord:
        """Append a finished evaluation to the log (flushed and fsynced before any agent sees its
        reward), then update ``best.json`` and prune candidate weights.

        Evaluations that finish while another is being written are written together, with one fsync
        (a group commit): the N slots of a round that end together cost a few fsyncs, not N.

        :returns: the record as logged.
        """
        done = asyncio.get_running_loop().create_future()
        self._to_log.append((record, done))
        if self._log_writer is None or self._log_writer.done():
            self._log_writer = asyncio.ensure_future(self._write_log())
        return await done

    async def _write_log(self) -> None:
        while self._to_log:
            await asyncio.sleep(0)  # evaluations finishing in this loop iteration join the batch
            batch, self._to_log = self._to_log, []
            try:
                logged = self.run.append_many([record for record, _ in batch])
                for record in logged:
                    self.run.update_best(record)
                self.run.prune_candidates(keep_top=self.cfg.search.reeval_top_k)
            except BaseException as err:  # noqa: BLE001 - raised in every waiting slot
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
            else:
                for (_, done), record in zip(batch, logged):
                    if not done.done():
                        done.set_result(record)


def _check_role(role: str) -> None:
    if role not in ROLE_NAMES:
        raise ValueError(f"role {role!r} is not one of {ROLE_NAMES}")


def _summary(record: EvaluationRecord) -> dict[str, Any]:
    """The progress line of a record for the driver's status (plain data)."""
    return {
        "round": record.round,
        "slot": record.slot or 0,
        "reward": record.reward,
        "g_macs_fraction": record.metrics.g_macs_fraction,
        "d_macs_fraction": record.metrics.d_macs_fraction,
        "round_times": record.round_times.to_dict() if record.round_times is not None else {},
    }


#: The Ray actor class: async, reserves no CPU (see the module docstring).
Coordinator = ray.remote(num_cpus=0)(CoordinatorCore)
