"""How the search loop scales with the evaluator pool: 1, 2, 4, 8 evaluators on one machine.

Runs the real search loop (:func:`agents.driver.run_search`: both agents, the Coordinator, N pairs per
round on the pool, the log, checkpoints) with an evaluator **stand-in** whose every search evaluation is
a fixed sleep (default 2 s) -- a stand-in for one GPU evaluation, so the numbers measure the loop, not a
network: no fine-tuning, no FID. Ray's logical CPUs are raised to the pool size (the stand-in uses no
CPU), so 8 evaluators fit on a 2-core machine; the agents and the Coordinator use the real cores.

From ``evaluations.jsonl`` (``round_times``, written by the Coordinator), over the steady rounds (round 0
excluded: it includes the agents' start-up):

- rounds/hour and candidates/hour (candidates = pairs evaluated; N per round);
- evaluator utilisation: evaluation seconds / (evaluators x steady wall time);
- share of a round that is not evaluation: 1 - (the round's longest evaluation) / (time between the ends
  of consecutive rounds): the agents' episodes and learning, coordination, logging, checkpoints.

Each pool size runs under the agents' learning schedules (``--learning``): ``sequential`` (SB3's own:
the agents learn from round r, then propose round r+1, so their gradient steps sit between two rounds'
evaluations), ``during-evaluation`` (``agents.learn_during_evaluation: true``: the gradient steps overlap
the next round's evaluation; see :mod:`agents.learners`) and ``default`` (``auto``: sequential below 4
candidates evaluated at once, during evaluation from 4, :func:`agents.learners.learns_during_evaluation`);
``split`` on request. The agents warm up for one round only (``agents.warmup_episodes=1``), so the
steady rounds learn.

Targets (issue: "the search scales out"): candidates/hour at 8 evaluators >= 7.2x that at 1; the share not
evaluation <= 5%; judged per learning schedule.

    python -m benchmarks.search_scale [CONFIG] [--set k=v] [--evaluators 1,2,4,8] [--sleep-s 2] [--rounds 12]
        [--learning default,sequential,during-evaluation]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/search_scale.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import ray
from rich.table import Table

from agents.driver import run_search, start_local_ray
from benchmarks._shared import RESULTS_DIR, base_parser, fmt, load_cfg, machine_info, parse_list, print_table, write_results
from collabprune.config import RunConfig
from collabprune.records import EvaluationRecord, RoundTimes, SeedResult
from collabprune.runs import RunDir

TARGET_SPEEDUP_8 = 7.2
TARGET_NOT_EVALUATION = 0.05
#: ``--learning`` name -> the agents' learning schedule (config overrides)
LEARNING = {
    "default": ["agents.learn_during_evaluation=auto", "agents.steps_before_proposal=0"],
    "sequential": ["agents.learn_during_evaluation=false"],
    "during-evaluation": ["agents.learn_during_evaluation=true", "agents.steps_before_proposal=0"],
    "split": ["agents.learn_during_evaluation=true", "agents.steps_before_proposal=4"],
}


class SleepEvaluator:
    """STAND-IN for one GPU evaluation (benchmark only): sleeps, then scores a pair by a formula.

    Each search-round evaluation sleeps ``sleep_s`` seconds; the metrics are a smooth function of the
    keep ratios (G's MACs use and how evenly D's ratios sit around G's), so the agents see rewards that
    depend on what they propose. Teacher and uniform evaluations return at once. It measures nothing
    about a network.

    :param cfg: the run config.
    :param run_dir: unused (the real evaluator caches there).
    :param sleep_s: seconds of each search-round evaluation.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, sleep_s: float = 2.0) -> None:
        from envs.space import RoleSpace

        self.cfg = cfg
        self.sleep_s = sleep_s
        self.g_space = RoleSpace.from_config("generator", cfg)
        self.d_space = RoleSpace.from_config("discriminator", cfg)

    def space_digests(self) -> dict[str, str]:
        return {"generator": self.g_space.channels.digest, "discriminator": self.d_space.channels.digest}

    def uniform_ratios(self, g_budget: float | None = None) -> tuple[list[float], list[float]]:
        g = self.g_space if g_budget is None else self.g_space.at_budget(g_budget)
        return g.uniform_candidate(), self.d_space.uniform_candidate()

    def evaluate_teacher(self) -> EvaluationRecord:
        metrics = {"fd_metric": "fd_teacher_d", "fd_teacher_d": 0.0, "l_kde": 0.0, "bal": 0.0, "rho": 1.0}
        return EvaluationRecord.from_dict({"metrics": metrics, "reward": None, "diverged": False})

    def evaluate(self, g_ratios: list[float], d_ratios: list[float], seed: int, baseline: dict[str, Any] | None,
                 save_dir: Path | None = None) -> EvaluationRecord:
        from collabprune.evaluation import compute_reward

        g, d = g_ratios, d_ratios
        t0 = time.time()
        if baseline is not None:
            time.sleep(self.sleep_s)
        g_use, d_use = self.g_space.macs_fraction(g), self.d_space.macs_fraction(d)
        spread = statistics.pstdev(g) if len(g) > 1 else 0.0
        rho = (0.1 + statistics.fmean(d)) / (0.1 + statistics.fmean(g))
        metrics = {"fd_metric": "fd_teacher_d", "fd_teacher_d": 2.0 - g_use + spread, "l_kde": 0.2 + spread,
                   "bal": abs(rho - 1.0) + 0.01, "rho": rho, "g_macs_fraction": g_use, "d_macs_fraction": d_use}
        reward, terms = compute_reward(metrics, baseline or metrics, self.cfg)
        return EvaluationRecord.from_dict({
            "g_ratios": list(g), "d_ratios": list(d), "g_channels": self.g_space.kept(g),
            "d_channels": self.d_space.kept(d), "seed": seed, "metrics": metrics, "reward": reward,
            "reward_terms": terms, "diverged": False, "times": {"total_s": time.time() - t0}})

    def evaluate_uniform(self, seed: int, save_dir: Path | None = None, g_budget: float | None = None) -> EvaluationRecord:
        out = self.evaluate(*self.uniform_ratios(g_budget), seed, None, save_dir)
        out.seed_results = [SeedResult(seed=seed, metrics=out.metrics, diverged=False)]
        return out


class _Factory:
    """Picklable evaluator builder for the pool: ``SleepEvaluator(cfg, run_dir, sleep_s)``."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s

    def __call__(self, cfg: RunConfig, run_dir: Path) -> SleepEvaluator:
        return SleepEvaluator(cfg, run_dir, self.sleep_s)


def analyse(records: list[EvaluationRecord], evaluators: int) -> dict[str, Any]:
    """Throughput and overhead of one run's search records (see the module docstring).

    :param records: the run's search records (round >= 0), each with ``round_times``.
    :param evaluators: the pool size.
    :raises ValueError: fewer than 3 rounds (no steady period to measure).
    """
    by_round: dict[int, list[RoundTimes]] = {}
    for r in records:
        assert r.round is not None and r.round_times is not None, "a search record of an agent search"
        by_round.setdefault(r.round, []).append(r.round_times)
    rounds = sorted(by_round)
    if len(rounds) < 3:
        raise ValueError(f"{len(rounds)} rounds logged: need at least 3 (round 0 is start-up)")
    end = {k: max(float(t.finished_at or 0.0) for t in by_round[k]) for k in rounds}
    longest = {k: max(t.evaluation_s for t in by_round[k]) for k in rounds}
    steady = rounds[1:]
    periods = [end[k] - end[k - 1] for k in steady]
    wall = end[steady[-1]] - end[rounds[0]]
    candidates = sum(len(by_round[k]) for k in steady)
    busy = sum(t.evaluation_s for k in steady for t in by_round[k])
    not_eval = [max(0.0, p - longest[k]) / p for k, p in zip(steady, periods)]
    return {
        "rounds": len(rounds),
        "slots": len(by_round[rounds[-1]]),
        "steady_period_s": statistics.fmean(periods),
        "rounds_per_hour": 3600.0 * len(steady) / wall,
        "candidates_per_hour": 3600.0 * candidates / wall,
        "evaluator_utilisation": busy / (evaluators * wall),
        "share_not_evaluation": statistics.fmean(not_eval),
        "not_evaluation_s": statistics.fmean(p - longest[k] for k, p in zip(steady, periods)),
        "mean_agents_s": statistics.fmean(t.agents_s for k in steady for t in by_round[k]),
    }


def run_one(cfg: RunConfig, evaluators: int, sleep_s: float, run_dir: Path) -> dict[str, Any]:
    """One search with ``evaluators`` stand-in evaluators on a fresh local Ray with that many logical CPUs."""
    start_local_ray(num_cpus=evaluators)
    try:
        t0 = time.time()
        run_search(cfg, run_dir, progress=False, evaluator_factory=_Factory(sleep_s))
        wall = time.time() - t0
    finally:
        ray.shutdown()
    records = RunDir.open(run_dir, cfg).search_records()
    return {"evaluators": evaluators, "wall_s": wall, "run_dir": run_dir, **analyse(records, evaluators)}


def _targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    at8 = next((r for r in runs if r["evaluators"] == 8), None)
    targets: dict[str, Any] = {
        "speedup_8_vs_1": None if at8 is None else at8["speedup"],
        "speedup_8_vs_1_target": TARGET_SPEEDUP_8,
        "max_share_not_evaluation": max(r["share_not_evaluation"] for r in runs),
        "share_not_evaluation_target": TARGET_NOT_EVALUATION,
    }
    targets["met"] = bool(at8 is not None and at8["speedup"] >= TARGET_SPEEDUP_8
                          and targets["max_share_not_evaluation"] <= TARGET_NOT_EVALUATION)
    return targets


def main() -> None:
    parser = base_parser("search_scale", __doc__.split("\n")[0])
    parser.add_argument("--evaluators", default="1,2,4,8", help="pool sizes to run")
    parser.add_argument("--sleep-s", type=float, default=2.0, help="seconds of each stand-in evaluation")
    parser.add_argument("--rounds", type=int, default=12, help="search rounds per run")
    parser.add_argument("--learning", default="default,sequential,during-evaluation",
                        help=f"the agents' learning schedules to run, comma-separated: {', '.join(LEARNING)}")
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "search_scale_runs",
                        help="parent folder of the run directories (a fresh sub-folder per invocation)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 2 evaluators, 4 rounds, 0.5 s")
    args = parser.parse_args()
    if args.quick:
        args.evaluators, args.rounds, args.sleep_s = "1,2", 4, 0.5
    schedules = parse_list(args.learning, str)
    unknown = [m for m in schedules if m not in LEARNING]
    if unknown:
        parser.error(f"--learning: unknown schedule(s) {', '.join(unknown)}; choose from {', '.join(LEARNING)}")
    parent = args.work / time.strftime("%Y%m%d-%H%M%S")
    runs: list[dict[str, Any]] = []
    targets: dict[str, Any] = {}
    for schedule in schedules:
        mode_runs = []
        for n in parse_list(args.evaluators, int):
            cfg = load_cfg(args.config, args.overrides, [
                f"search.rounds={args.rounds}", f"search.num_evaluators={n}", "search.reeval_top_k=0",
                "agents.warmup_episodes=1", *LEARNING[schedule]])
            print(f"[search_scale] learning {schedule}, {n} evaluator(s): {args.rounds} rounds of {n} pair(s), "
                  f"{args.sleep_s:g} s each")
            mode_runs.append({"learning": schedule, **run_one(cfg, n, args.sleep_s, parent / schedule / f"evaluators_{n}")})
        base = mode_runs[0]["candidates_per_hour"]
        for r in mode_runs:
            r["speedup"] = r["candidates_per_hour"] / base
        targets[schedule] = _targets(mode_runs)
        runs += mode_runs

    table = Table(title=f"Search loop with a {args.sleep_s:g} s evaluation stand-in (steady rounds)")
    for col in ("learning", "evaluators", "pairs/round", "s/round", "rounds/h", "candidates/h", "speed-up",
                "utilisation", "not evaluation", "agents s"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(r["learning"], str(r["evaluators"]), str(r["slots"]), fmt(r["steady_period_s"], 3),
                      fmt(r["rounds_per_hour"], 4), fmt(r["candidates_per_hour"], 4), f"{r['speedup']:.2f}x",
                      f"{100 * r['evaluator_utilisation']:.1f}%",
                      f"{100 * r['share_not_evaluation']:.1f}% ({r['not_evaluation_s']:.2f} s)", fmt(r["mean_agents_s"], 3))
    print_table(table)
    for schedule, t in targets.items():
        print(f"targets, learning {schedule}: 8 vs 1 evaluators {fmt(t['speedup_8_vs_1'], 3)}x (>= {TARGET_SPEEDUP_8}), "
              f"share not evaluation at most {100 * t['max_share_not_evaluation']:.1f}% (<= 5%): "
              f"{'met' if t['met'] else 'NOT met'}")
    write_results(args.out, {
        "benchmark": "search_scale",
        "config": args.config,
        "overrides": args.overrides,
        "args": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "out")},
        "machine": machine_info(),
        "notes": ["evaluations are a fixed sleep (a stand-in for a GPU evaluation), not a network",
                  "steady rounds: round 0 excluded (agent start-up); agents.warmup_episodes=1"],
        "targets": targets,
        "runs": runs,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
