"""Selection that survives re-evaluation (DESIGN.md §4, "Cheap and faithful").

A search's best reward is partly luck: the candidate that scored highest under the search's seed is
the one whose noise was most favourable (the winner's curse). Before a run calls a candidate best,
the ``search.reeval_top_k`` best candidates by search reward and the uniform candidate are evaluated
again with ``search.reeval_seeds`` fresh seeds (never a search or baseline seed). Under each fresh
seed a candidate's reward is computed against the uniform candidate's metrics under that same seed
(paired, common random numbers); its re-evaluated score is the mean over the seeds. The best mean
wins, the uniform candidate included: when nothing beats it, the run's best is uniform.

Every (candidate, seed) is evaluated once and logged in ``reevaluations.jsonl``, so a resumed run
repeats nothing. The evaluations themselves are delegated to ``evaluate_many`` (a Ray evaluator pool
in a search, a local :class:`~collabprune.evaluation.CandidateEvaluator` in the benchmarks).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, Sequence

from collabprune.config import RunConfig
from collabprune.evaluation import compute_reward
from collabprune.records import EvaluationRecord, Reeval, ReevalCandidate, ReevalRecord
from collabprune.runs import UNIFORM_ROUND, RunDir

#: ``evaluate_many([(g_ratios, d_ratios, seed), ...]) -> [evaluation record, ...]`` (baseline None).
EvaluateMany = Callable[[Sequence[tuple[list[float], list[float], int]]], list[EvaluationRecord]]


def reeval_seeds(cfg: RunConfig) -> list[int]:
    """The fresh seeds of the top-k re-evaluation: never a search or uniform-baseline seed."""
    return [10_000 + 100 * cfg.search.seed + i for i in range(cfg.search.reeval_seeds)]


def reevaluate_top(cfg: RunConfig, run: RunDir, evaluate_many: EvaluateMany, budget_slot: int = 0) -> EvaluationRecord:
    """Re-evaluate the top-k search candidates of a generator budget and its uniform candidate with
    fresh seeds; pick the best.

    :param cfg: the run's config (``search.reeval_top_k``, ``search.reeval_seeds``, the reward).
    :param run: the run directory (search records and the uniform record logged).
    :param evaluate_many: runs the missing (candidate, seed) evaluations (see the module docstring).
    :param budget_slot: which budget: the slot of its uniform candidate (0, the primary budget; a
        multi-budget search's other budgets 1 .. K-1, :func:`collabprune.pruning.roles.generator_budgets`).
    :returns: the winner's search record with its ``reeval`` (:class:`~collabprune.records.Reeval`:
        every contender's mean and per-seed rewards); for the primary budget also the new ``best.json``.
    :raises RunDirError: no uniform record of that budget.
    """
    from collabprune.errors import RunDirError

    seeds = reeval_seeds(cfg)
    uniform = run.get(UNIFORM_ROUND, slot=budget_slot)
    if uniform is None:
        raise RunDirError(f"{run.path}: the uniform candidate is not logged; nothing to re-evaluate against")
    contenders = [uniform] + run.top(cfg.search.reeval_top_k, uniform.budget)
    jobs = [(c, s) for c in contenders for s in seeds if run.get_reeval(_round(c), _slot(c), s) is None]
    results = evaluate_many([(list(c.g_ratios), list(c.d_ratios), s) for c, s in jobs]) if jobs else []
    for (c, s), result in zip(jobs, results):
        run.append_reeval(ReevalRecord(round=_round(c), slot=_slot(c), seed=s, metrics=result.metrics,
                                       diverged=bool(result.diverged), g_ratios=c.g_ratios, d_ratios=c.d_ratios))
    base = {s: run.get_reeval(UNIFORM_ROUND, budget_slot, s) for s in seeds}
    scores = []
    for c in contenders:
        rewards = []
        for s in seeds:
            r, b = run.get_reeval(_round(c), _slot(c), s), base[s]
            if r is None or b is None or r.diverged or b.diverged:
                rewards.append(cfg.reward.penalty)
            else:
                rewards.append(compute_reward(r.metrics, b.metrics, cfg)[0])
        scores.append((statistics.fmean(rewards), c, rewards))
    best_score, best, rewards = max(scores, key=lambda x: x[0])  # ties: the first, i.e. uniform
    record = dataclasses.replace(best, reeval=Reeval(
        seeds=seeds, rewards=rewards, reward=best_score, search_reward=best.reward, uniform_reward=scores[0][0],
        candidates=[ReevalCandidate(round=_round(c), slot=_slot(c), search_reward=c.reward, reward=m, rewards=rs)
                    for m, c, rs in scores],
    ))
    if budget_slot == 0:
        run.write_best(record)
    return record


def _round(record: EvaluationRecord) -> int:
    assert record.round is not None, "a logged record has a round"
    return record.round


def _slot(record: EvaluationRecord) -> int:
    return record.slot or 0
