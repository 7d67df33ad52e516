"""TEST DOUBLE of ``collabprune.evaluation.CandidateEvaluator`` -- for Ray plumbing/exchange tests ONLY.

Deterministic, instant "metrics" computed from the ratios, so tests of the Coordinator, the agents'
exchange and resume bookkeeping run in seconds. Nothing here measures a network; the end-to-end
tests (tests/test_search_e2e.py) use the real CandidateEvaluator.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from collabprune.config import RunConfig
from collabprune.models.family import FAMILIES
from collabprune.records import EvaluationRecord, SeedResult


class FakeEvaluator:
    """Plumbing-only evaluator double (see module docstring).

    :param cfg: the run config.
    :param run_dir: unused.
    :param sleep_s: seconds each search-round evaluation sleeps.
    :param die_once: marker file; the first search-round evaluation kills the process and creates it.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, sleep_s: float = 0.0, die_once: str | None = None) -> None:
        from envs.space import RoleSpace

        self.cfg = cfg
        self.sleep_s = sleep_s
        self.die_once = Path(die_once) if die_once else None
        self.spaces = {r: RoleSpace.from_config(r, cfg) for r in ("generator", "discriminator")}

    def space_digests(self) -> dict[str, str]:
        return {r: s.channels.digest for r, s in self.spaces.items()}

    def uniform_ratios(self, g_budget: float | None = None) -> tuple[list[float], list[float]]:
        g = self.spaces["generator"] if g_budget is None else self.spaces["generator"].at_budget(g_budget)
        return g.uniform_candidate(), self.spaces["discriminator"].uniform_candidate()

    def evaluate_teacher(self) -> EvaluationRecord:
        return EvaluationRecord.from_dict({
            "metrics": {"fd_metric": "fd_teacher_d", "fd_teacher_d": 0.0, "l_kde": 0.0, "bal": 0.0, "rho": 1.0},
            "reward": None, "diverged": False})

    def evaluate(self, g: list[float], d: list[float], seed: int, baseline: dict[str, Any] | None,
                 save_dir: Path | None = None) -> EvaluationRecord:
        if baseline is not None and self.sleep_s:
            time.sleep(self.sleep_s)  # a slow search-round evaluation (timeout test)
        if baseline is not None and self.die_once is not None and not self.die_once.exists():
            self.die_once.write_text(str(seed))
            os._exit(1)  # the evaluator process crashes once, mid-evaluation (restart test)
        gs, ds = self.spaces["generator"], self.spaces["discriminator"]
        mg, md = sum(g) / len(g), sum(d) / len(d)
        metrics = {
            "fd_metric": "fd_teacher_d",
            "fd_teacher_d": 1.0 + 5.0 * (1 - mg) ** 2 + 0.01 * (seed % 7),
            "l_kde": 0.1 + (1 - mg) * 0.5,
            "bal": abs(math.log((0.5 + md) / (0.5 + mg))) + 0.01,
            "rho": (0.5 + md) / (0.5 + mg),
            "g_macs_fraction": gs.macs_fraction(g),
            "d_macs_fraction": ds.macs_fraction(d),
        }
        if FAMILIES[self.cfg.model.family].paired and self.cfg.finetune.lambda_l1 > 0:
            metrics["pull"] = 0.2 + 0.5 * d[-1]  # as measured: D's adversarial pull grows with its last group
        from collabprune.evaluation import compute_reward

        reward, terms = compute_reward(metrics, baseline or metrics, self.cfg)  # uniform: its own baseline
        return EvaluationRecord.from_dict({
            "g_ratios": list(g), "d_ratios": list(d), "g_channels": gs.kept(g), "d_channels": ds.kept(d),
            "seed": seed, "metrics": metrics, "reward": reward, "reward_terms": terms, "diverged": False,
            "times": {"total_s": 0.0}})

    def evaluate_uniform(self, seed: int, save_dir: Path | None = None, g_budget: float | None = None) -> EvaluationRecord:
        g, d = self.uniform_ratios(g_budget)
        out = self.evaluate(g, d, seed, None, save_dir)
        out.seed_results = [SeedResult(seed=seed, metrics=out.metrics, diverged=False)]
        return out
