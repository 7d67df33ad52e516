"""Evaluator pool: Ray actors wrapping :class:`collabprune.evaluation.CandidateEvaluator`.

An evaluator fine-tunes and scores one (G, D) candidate pair per call. Calls are idempotent
(seeded, no side effects on the run's log: the Coordinator writes the log), so Ray may retry them
on a restarted actor (``max_task_retries``) after the actor's process dies (``max_restarts``).

Resources: ``num_gpus=1`` and ``num_cpus=1`` each when the cluster has GPUs, else ``num_cpus=1``.
Torch threads: :func:`evaluator_threads` (an evaluator that has the machine to itself uses its cores).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import ray

from collabprune.config import RunConfig
from collabprune.records import EvaluationRecord

#: CPUs reserved by one evaluator actor.
EVALUATOR_NUM_CPUS = 1

#: ``factory(cfg, run_dir) -> object`` with ``evaluate``, ``evaluate_teacher``, ``evaluate_uniform`` and ``uniform_ratios``
#: (the :class:`collabprune.evaluation.CandidateEvaluator` API).
EvaluatorFactory = Callable[[RunConfig, Path], Any]


def _default_factory(cfg: RunConfig, run_dir: Path) -> Any:
    from collabprune.evaluation import CandidateEvaluator

    return CandidateEvaluator(cfg, run_dir)


class EvaluatorCore:
    """One candidate evaluator (the body of the :data:`Evaluator` actor; usable without Ray).

    :param cfg: the run config as plain data (``RunConfig.to_dict()``).
    :param run_dir: the run directory (evaluators cache FID statistics there).
    :param factory: builds the evaluator object; default ``CandidateEvaluator(cfg, run_dir)``. Tests
        pass a deterministic double to check the Ray plumbing only.
    :param num_threads: torch intra-op threads of this process.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        run_dir: str,
        factory: EvaluatorFactory | None = None,
        num_threads: int = EVALUATOR_NUM_CPUS,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        self.cfg = RunConfig.model_validate(cfg)
        self.run_dir = Path(run_dir)
        self._impl = (factory or _default_factory)(self.cfg, self.run_dir)

    def evaluate(
        self,
        g_ratios: list[float],
        d_ratios: list[float],
        seed: int,
        baseline: Mapping[str, Any] | None,
        save_dir: str | None = None,
    ) -> EvaluationRecord:
        """Fine-tune and score one pair (see ``CandidateEvaluator.evaluate``).

        :param g_ratios: keep ratio per generator group.
        :param d_ratios: keep ratio per discriminator group.
        :param seed: the round's seed (``collabprune.runs.round_seed``).
        :param baseline: the uniform candidate's metrics, or ``None`` for the uniform candidate itself.
        :param save_dir: folder for the fine-tuned pair's weights and specs (``runs.candidate_dir``).
        :returns: the evaluation record (no round or slot yet: the Coordinator adds them), which
            travels between actors as itself (a dataclass, pickled by Ray).
        """
        folder = Path(save_dir) if save_dir is not None else None
        return self._impl.evaluate(list(g_ratios), list(d_ratios), int(seed), baseline, folder)

    def evaluate_teacher(self) -> EvaluationRecord:
        """Score the unpruned teacher pair (metrics incl. ``rho_t``)."""
        return self._impl.evaluate_teacher()

    def evaluate_uniform(self, seed: int, save_dir: str | None = None, g_budget: float | None = None) -> EvaluationRecord:
        """The reward baseline: the uniform candidate averaged over ``reward.uniform_seeds`` seeds from
        ``seed``, at the generator budget ``g_budget`` (default the primary one; see
        ``CandidateEvaluator.evaluate_uniform``)."""
        folder = Path(save_dir) if save_dir is not None else None
        return self._impl.evaluate_uniform(int(seed), folder, g_budget)

    def uniform_ratios(self) -> tuple[list[float], list[float]]:
        """The uniform candidate: (G ratios, D ratios), one ratio per role, the largest meeting its budget."""
        g, d = self._impl.uniform_ratios()
        return list(g), list(d)

    def space_digests(self) -> dict[str, str]:
        """``{role name: ChannelSpace.digest}`` of the spaces this evaluator prunes in."""
        return dict(self._impl.space_digests())


#: The Ray actor class; resources are set per instance by :func:`make_evaluators`.
Evaluator = ray.remote(EvaluatorCore)


def evaluator_resources(num_wanted: int | str) -> tuple[int, dict[str, float]]:
    """How many evaluators fit the connected cluster, and the Ray options of each.

    :param num_wanted: ``search.num_evaluators``: a count, or ``"auto"`` for as many as the cluster fits.
    :returns: (count, options): with GPUs, one GPU and one CPU each, at most one per GPU; without,
        one CPU each, up to the cluster's CPUs (the agents reserve none: they are idle while the
        evaluators work); at least one.
    """
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = float(res.get("CPU", 1))
    if gpus >= 1:
        room, options = gpus, {"num_cpus": EVALUATOR_NUM_CPUS, "num_gpus": 1}
    else:
        room, options = int(cpus // EVALUATOR_NUM_CPUS), {"num_cpus": EVALUATOR_NUM_CPUS}
    wanted = room if num_wanted == "auto" else int(num_wanted)
    return max(1, min(wanted, room)), options


def make_evaluators(
    cfg: RunConfig, run_dir: Path, factory: EvaluatorFactory | None = None
) -> list[ray.actor.ActorHandle]:
    """Start the evaluator pool on the connected Ray cluster.

    :param cfg: the run config (``search.num_evaluators``, ``search.evaluator_max_restarts``).
    :param run_dir: the run directory.
    :param factory: evaluator builder (default: ``CandidateEvaluator``).
    :returns: actor handles (``max_restarts`` and ``max_task_retries`` = evaluator_max_restarts).
    """
    count, options = evaluator_resources(cfg.search.num_evaluators)
    restarts = cfg.search.evaluator_max_restarts
    return [
        Evaluator.options(max_restarts=restarts, max_task_retries=restarts, **options).remote(
            cfg.to_dict(), str(run_dir), factory, evaluator_threads(count, options)
        )
        for _ in range(count)
    ]


def evaluator_threads(count: int, options: dict[str, float]) -> int:
    """Torch threads of each evaluator: its share of the node's cores when it runs on the CPU.

    The agents and the Coordinator are idle while the evaluators work (an agent waits for its
    rewards), so without GPUs the evaluators split the driver node's cores between them rather than
    use one core each (on a 2-core machine a single evaluator uses both). With a GPU, one thread.
    """
    if options.get("num_gpus"):
        return 1
    return max(1, usable_cpus() // max(1, count))


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity: ``taskset``, cgroup cpusets), not the machine's.

    An embedded Ray instance offers this many CPUs and its evaluators split them; more torch threads
    than usable cores oversubscribe them, and OpenMP's waiting threads then slow training many-fold.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return os.cpu_count() or 1
