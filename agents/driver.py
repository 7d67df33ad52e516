"""The search driver: ``run_search(cfg, run_dir)`` runs one collaborative search end to end.

Steps (DESIGN.md §5, §6):

1. A generator latency budget gets its latency model: the run's own ``latency_model.json``, or
   timed here on the budget's backend (:mod:`collabprune.latency_budget`). Check both budgets
   (``BudgetError`` before anything starts) and create or reopen the run directory (``resume=True``
   checks the config digest and repairs a torn log line).
2. Connect to Ray: an embedded instance by default (``ray.init(address="local")``, all local CPUs,
   no dashboard), the cluster of ``address`` (or of ``RAY_ADDRESS``, e.g. inside a Ray job) otherwise.
   An already-initialised Ray (tests, notebooks) is reused and left running.
3. Start the evaluator pool (its size fixes the run's slots: candidates per round, rounded up to a
   multiple of the number of budgets of a multi-budget search); evaluate the teacher pair (round -2)
   and the uniform candidate (round -1, averaged over ``reward.uniform_seeds`` seeds) unless they are
   logged already. The uniform metrics are the reward baseline of every later round and the uniform
   candidate is the first best. A multi-budget search (``search.budgets``) has one uniform candidate
   per generator budget (round -1, slot k for budget k, primary first): slot s of every round
   searches budget s mod K against its own uniform baseline.
4. Start the Coordinator and the two agents (both pinned to this node, as they write the run
   directory) and wait for both agents to play exactly ``search.rounds`` rounds, with a progress bar.
5. Selection that survives re-evaluation (DESIGN.md §4): the ``search.reeval_top_k`` best candidates
   by search reward and the uniform candidate are evaluated again with ``search.reeval_seeds`` fresh
   seeds (concurrently on the pool; logged in ``reevaluations.jsonl``, never repeated on resume);
   each candidate's reward under a seed is against the uniform candidate under that seed. The best
   mean wins; ``best.json`` records it with its re-evaluated score (the uniform candidate when nothing
   beat it). A multi-budget search does this per budget and writes every budget's winner to
   ``front.json`` (``best.json`` is the primary budget's).
6. Plot the curves, write ``summary.json``, stop the actors and return the summary.

Resume after a SIGKILL at any point: every evaluation that reached ``evaluations.jsonl`` is kept and
never repeated; agents restart from their latest checkpoint and replay the logged rounds after it
(see :mod:`agents.pruning_agent`), then the search continues with the first unlogged round.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.coordinator import Coordinator, Deadlines
from agents.evaluator import EvaluatorFactory, make_evaluators, usable_cpus
from agents.pruning_agent import PruningAgent
from collabprune.config import RunConfig
from collabprune.errors import CollabPruneError, SpaceMismatchError
from collabprune.io import atomic_write_json
from collabprune.latency_budget import describe as describe_latency_model
from collabprune.latency_budget import ensure_latency_model, latency_budget
from collabprune.pruning.roles import generator_budgets, record_budgets, run_slots, slot_budget
from collabprune.records import EvaluationRecord
from collabprune.runs import TEACHER_ROUND, UNIFORM_ROUND, RunDir, candidate_dir, round_seed
from collabprune.selection import EvaluateMany, reevaluate_top
from envs.space import ROLES, RoleSpace, peer_length


#: Ray's switch for "this machine is a cluster node" (default on Linux). Set to 0, Ray treats the
#: machine as one local node: the node IP is 127.0.0.1, and the GCS, raylet, workers and agents listen on
#: 127.0.0.1 only. It is the only way Ray 2.x offers to keep an embedded instance off the network
#: (``_node_ip_address="127.0.0.1"`` alone is replaced by the machine's LAN address).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Start an embedded Ray on 127.0.0.1 only (DESIGN.md §6: loopback unless told otherwise).

    Ray reads :data:`LOOPBACK_ENV` into a module constant at import; the processes ``ray.init`` starts
    (GCS, raylet, workers, agents) read it from their environment. Both are set for the start and
    restored afterwards, so a later connection of this process to a cluster is unaffected.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def start_local_ray(num_cpus: int | None = None, progress: bool = False) -> None:
    """Start an embedded Ray instance on this machine, listening on 127.0.0.1 only, and connect to it.

    What ``collabprune search`` without an address runs on: no dashboard, Ray's default token
    authentication, every port on loopback (:func:`_loopback_only`).

    :param num_cpus: logical CPUs it offers (default: the cores this process may use,
        :func:`agents.evaluator.usable_cpus`); more than the machine has only for stand-in evaluators.
    :param progress: a progress bar is shown (worker logs are then not forwarded to the driver).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with _loopback_only():
        ray.init(address="local", num_cpus=num_cpus or usable_cpus(), include_dashboard=False,
                 log_to_driver=not progress, _node_ip_address="127.0.0.1")


def _connect(address: str | None, progress: bool) -> bool:
    """Initialise Ray unless it already is; return whether this call started the connection.

    With no address (argument or ``RAY_ADDRESS``) Ray starts embedded: no dashboard, every port on
    127.0.0.1 (:func:`_loopback_only`), Ray's default token authentication; otherwise this process
    joins the cluster at ``address`` as a driver.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        start_local_ray(progress=progress)
    else:
        ray.init(address=address, log_to_driver=not progress)
    return True


def _here() -> NodeAffinitySchedulingStrategy:
    """Schedule on this (the driver's) node: the run directory is on its filesystem."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _unwrap(err: BaseException) -> BaseException:
    """The original exception behind (nested) Ray task errors."""
    cause = err
    while isinstance(cause, ray.exceptions.RayTaskError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    return cause


def _check_spaces(spaces: list[RoleSpace], evaluators: list[dict[str, str]]) -> None:
    """Every evaluator prunes in the channel spaces the agents propose in (same digests).

    :raises SpaceMismatchError: an evaluator's space of a role differs from the driver's.
    """
    for i, digests in enumerate(evaluators):
        for space in spaces:
            if digests.get(space.name) != space.channels.digest:
                raise SpaceMismatchError(
                    f"evaluator {i}: its {space.name} channel space {digests.get(space.name)} is not the search's "
                    f"{space.channels.digest}", hint="run one collabprune version on every node of the cluster")


def _get(ref: Any, timeout: float, what: str = "a Ray call", limit: str = "search.round_timeout_s") -> Any:
    """``ray.get`` with a timeout; user errors raised remotely come back as themselves.

    :param what: what is waited for, for the message.
    :param limit: the config field ``timeout`` comes from, for the message.
    :raises TimeoutError: no answer within ``timeout`` seconds; the message names ``limit``.
    """
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what}: no answer within {timeout:.0f} s (set by {limit})") from None
    except ray.exceptions.RayTaskError as err:
        cause = _unwrap(err)
        if isinstance(cause, (CollabPruneError, TimeoutError)):
            raise cause from None
        raise


def _baselines(cfg: RunConfig, run: RunDir, evaluators: list[Any]) -> tuple[EvaluationRecord, list[EvaluationRecord]]:
    """Evaluate (or read from the log) the teacher pair and the seed-averaged uniform candidate of
    every generator budget (round -1, slot k for budget k of :func:`generator_budgets`; a
    multi-budget search's concurrently on the pool)."""
    timeout = cfg.search.round_timeout_s * max(1, cfg.reward.uniform_seeds)
    teacher = run.get(TEACHER_ROUND, round_seed(cfg, TEACHER_ROUND))
    if teacher is None:
        result = _get(evaluators[0].evaluate_teacher.remote(), timeout, "the teacher evaluation")
        teacher = run.append(dataclasses.replace(result, round=TEACHER_ROUND, seed=round_seed(cfg, TEACHER_ROUND)))
    seed = round_seed(cfg, UNIFORM_ROUND)
    budgets, logged_as = generator_budgets(cfg), record_budgets(cfg)
    missing = [k for k in range(len(budgets)) if run.get(UNIFORM_ROUND, seed, slot=k) is None]
    refs = {k: evaluators[i % len(evaluators)].evaluate_uniform.remote(
        seed, str(candidate_dir(run.path, UNIFORM_ROUND, k)), budgets[k]) for i, k in enumerate(missing)}
    for k, ref in refs.items():  # logged in slot order
        result = _get(ref, timeout * (1 + len(missing) // len(evaluators)), "the uniform evaluation")
        run.append(dataclasses.replace(result, round=UNIFORM_ROUND, seed=seed, slot=k,
                                       budget=slot_budget(logged_as, k)))
    uniform = [run.get(UNIFORM_ROUND, seed, slot=k) for k in range(len(budgets))]
    run.update_best(uniform[0])  # type: ignore[arg-type]
    return teacher, uniform  # type: ignore[return-value]


def pool_evaluate_many(cfg: RunConfig, evaluators: list[Any]) -> EvaluateMany:
    """An ``evaluate_many`` (:mod:`collabprune.selection`) over the evaluator pool: the jobs are spread
    round-robin over the actors and run concurrently."""

    def run(jobs: Any) -> list[EvaluationRecord]:
        refs = [evaluators[i % len(evaluators)].evaluate.remote(g, d, seed, None, None)
                for i, (g, d, seed) in enumerate(jobs)]
        timeout = cfg.search.round_timeout_s * (1 + len(refs) // max(1, len(evaluators)))
        return [_get(ref, timeout, "a re-evaluation") for ref in refs]

    return run


class _Bar:
    """Rich progress bar (or nothing): round, reward of the round, best reward and MACs, s/round."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        self.task = self.progress.add_task("search", total=total, completed=done, info="starting")
        self.progress.start()

    def note(self, text: str) -> None:
        """Show what the search is doing before its first round."""
        if self.enabled:
            self.progress.update(self.task, info=text)

    def update(self, status: dict[str, Any]) -> None:
        if not self.enabled:
            return
        last, best = status.get("last"), status.get("best")
        parts = []
        if last:
            t = last.get("round_times", {})
            secs = sum(t.get(k, 0.0) for k in ("agents_s", "coordination_s", "evaluation_s"))
            parts.append(f"reward {last['reward']:+.3f}")
            parts.append(f"{secs:.1f} s/round")
        if best:
            g, d = best.get("g_macs_fraction"), best.get("d_macs_fraction")
            macs = f" (G {g:.2f}, D {d:.2f} MACs)" if g is not None and d is not None else ""
            parts.append(f"best {best['reward']:+.3f}{macs}")
        self.progress.update(self.task, completed=status["rounds_done"], info=" | ".join(parts))

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


def _wait_agents(cfg: RunConfig, agents: list[Any], coordinator: Any, bar: _Bar) -> list[dict[str, Any]]:
    """Wait for both agents, updating the bar; fail fast when one fails or nothing moves for too long."""
    refs = [a.run.remote() for a in agents]
    pending = list(refs)
    deadlines = Deadlines.of(cfg)
    stall_s = deadlines.stall_s
    # The Coordinator is async and answers status while rounds run, but a loaded machine may delay any
    # Ray call by seconds: wait as long as the driver would wait for progress at all, not one evaluation
    # (with a small search.round_timeout_s a delayed status answer ended healthy runs).
    poll_s = stall_s
    last_done, last_change = -1, time.time()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in ready:
            _get(ref, poll_s, "an agent")  # raises now if that agent failed
        status = _get(coordinator.status.remote(), poll_s, "the coordinator's status")
        bar.update(status)
        if status["evaluations"] != last_done:
            last_done, last_change = status["evaluations"], time.time()
        elif time.time() - last_change > stall_s:
            raise TimeoutError(f"no evaluation finished in {stall_s:.0f} s (round {status['rounds_done']} is stuck; "
                               "search.round_timeout_s sets this limit)")
    return [_get(ref, poll_s, "an agent") for ref in refs]


def _summary(cfg: RunConfig, run: RunDir, agents: list[dict[str, Any]], wall_s: float, resumed: bool) -> dict[str, Any]:
    records = run.search_records()
    best = run.read_best() or run.best() or EvaluationRecord()
    uniform = run.get(UNIFORM_ROUND)
    teacher = run.get(TEACHER_ROUND)
    per_round = [r.round_times.to_dict() if r.round_times is not None else {} for r in records]

    def mean(key: str) -> float:
        values = [t[key] for t in per_round if key in t]
        return statistics.fmean(values) if values else 0.0

    return {
        "run_dir": str(run.path),
        "rounds": run.completed_rounds(),
        "slots": run.slots,
        "evaluations": len(records),
        "resumed": resumed,
        "best_round": best.round,
        "best_slot": best.slot or 0,
        "best_reward": best.reward,
        "best_reeval": best.reeval.to_dict() if best.reeval is not None else None,
        "best_g_ratios": best.g_ratios if best.round is not None else None,
        "best_d_ratios": best.d_ratios if best.round is not None else None,
        "best_metrics": best.metrics.to_dict() if best.round is not None else None,
        "uniform_reward": uniform.reward if uniform is not None else None,
        # a multi-budget search's best per generator budget (front.json); [] for a single budget
        "front": [{"budget": r.budget, "round": r.round, "slot": r.slot or 0, "reward": r.reward,
                   "reeval_reward": r.reeval.reward if r.reeval is not None else None,
                   "g_macs_fraction": r.metrics.g_macs_fraction} for r in run.read_front()],
        "teacher_metrics": teacher.metrics.to_dict() if teacher is not None else None,
        "times": {
            "wall_s": wall_s,
            "mean_agents_s": mean("agents_s"),
            "mean_coordination_s": mean("coordination_s"),
            "mean_evaluation_s": mean("evaluation_s"),
            "per_round": per_round,
        },
        "agents": agents,
    }


def run_search(
    cfg: RunConfig,
    run_dir: str | os.PathLike[str],
    address: str | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluator_factory: EvaluatorFactory | None = None,
) -> dict[str, Any]:
    """Run (or resume) a collaborative search and return its summary.

    :param cfg: the resolved run config (on resume: the run's own config, see
        :func:`collabprune.runs.resume_config`).
    :param run_dir: the run directory.
    :param address: Ray cluster address (``ray://HOST:10001`` or ``HOST:6379``); ``None``: the
        ``RAY_ADDRESS`` cluster if set, else an embedded Ray on this machine.
    :param resume: continue the run in ``run_dir`` (no completed evaluation is repeated or lost).
    :param progress: show a rich progress bar (and keep worker logs off the terminal).
    :param evaluator_factory: ``factory(cfg, run_dir)`` building the evaluator inside each evaluator
        actor; default ``CandidateEvaluator``. Only tests of the Ray plumbing pass a double.
    :returns: ``{"run_dir", "rounds", "best_round", "best_reward", "best_g_ratios", "best_d_ratios",
        "best_metrics", "uniform_reward", "teacher_metrics", "times": {"wall_s", "mean_agents_s",
        "mean_coordination_s", "mean_evaluation_s", "per_round"}, "agents", "resumed"}``.
    :raises BudgetError: a budget cannot be met.
    :raises RunDirError: a new run in a used folder, or a resume with another config.
    :raises TimeoutError: an evaluation or round took longer than ``search.round_timeout_s``.
    """
    t0 = time.time()
    run_dir = Path(run_dir)
    if not resume:
        RunDir.check_free(run_dir)  # before anything is written into it
    if latency_budget(cfg) is not None:  # its latency model: the run's own, or timed here, once
        cfg = ensure_latency_model(cfg, run_dir)
        print(describe_latency_model(cfg), flush=True)
    spaces = [RoleSpace.from_config(role, cfg) for role in ROLES]  # BudgetError before anything starts
    peer_len = peer_length(spaces)
    run = RunDir.open(run_dir, cfg) if resume else None
    started = _connect(address, progress)
    actors: list[Any] = []
    bar: _Bar | None = None
    try:
        evaluators = make_evaluators(cfg, run_dir, evaluator_factory)
        actors += evaluators
        if run is None:
            run = RunDir.create(run_dir, cfg, slots=run_slots(len(evaluators), len(generator_budgets(cfg))),
                                evaluators=len(evaluators))
        bar = _Bar(progress, cfg.search.rounds, run.completed_rounds())
        bar.note("starting evaluators")
        # the first answer of each evaluator waits out its start-up and says which spaces it prunes in
        _check_spaces(spaces, _get([e.space_digests.remote() for e in evaluators], cfg.search.startup_timeout_s,
                                   "evaluator start-up", "search.startup_timeout_s"))
        bar.note("evaluating the teacher pair and the uniform candidate")
        _baselines(cfg, run, evaluators)
        if run.completed_rounds() < cfg.search.rounds:
            bar.note("starting agents")
            cfg_data = cfg.to_dict()
            # named, so that an agent (also a restarted one) finds it without holding a handle argument
            name = f"collabprune-coordinator-{run.digest}-{os.getpid()}-{time.time_ns()}"
            namespace = ray.get_runtime_context().namespace
            coordinator = Coordinator.options(scheduling_strategy=_here(), name=name, namespace=namespace
                                              ).remote(cfg_data, str(run_dir), evaluators)
            actors.append(coordinator)
            searching = ROLES if cfg.search.agents == "both" else ROLES[:1]
            agents = [
                PruningAgent.options(scheduling_strategy=_here(), max_restarts=cfg.search.agent_max_restarts,
                                     max_task_retries=cfg.search.agent_max_restarts,
                                     ).remote(role, cfg_data, str(run_dir), (name, namespace), peer_len, run.slots)
                for role in searching
            ]
            actors += agents
            results = _wait_agents(cfg, agents, coordinator, bar)
        else:
            results = []
        run = RunDir(run_dir, run.digest)  # the Coordinator appended to the log
        if run.completed_rounds() != cfg.search.rounds:
            raise RuntimeError(f"{run.evaluations_path}: {run.completed_rounds()} rounds logged, "
                               f"expected {cfg.search.rounds}")
        if cfg.search.reeval_top_k > 0:
            bar.note(f"re-evaluating the top {cfg.search.reeval_top_k} with fresh seeds")
            front = [reevaluate_top(cfg, run, pool_evaluate_many(cfg, evaluators), k)
                     for k in range(len(generator_budgets(cfg)))]
        else:
            front = [run.best(b) for b in run.budgets()]
        if cfg.search.budgets is not None:
            run.write_front([b for b in front if b is not None])
    finally:
        if bar is not None:
            bar.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
    from collabprune.plots import plot_search

    plot_search(run.search_records(), run.plots_dir, run.get(UNIFORM_ROUND))
    summary = _summary(cfg, run, results, time.time() - t0, resume)
    brief = dict(summary, agents=[
        {"role": a["role"], "start_round": a["start_round"], "rounds": a["rounds"],
         "replayed": sorted({h["round"] for h in a["history"] if h["replayed"]}), "times": a["times"]}
        for a in results
    ])
    atomic_write_json(run.path / "summary.json", brief)
    return summary
