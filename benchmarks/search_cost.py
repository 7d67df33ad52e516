"""Where a search round's time goes, and rounds per hour with 1 and 2 evaluators.

Runs a short collaborative search (:func:`agents.driver.run_search`, default 6 rounds of the config)
once per requested evaluator count (``search.num_evaluators``) and splits each round's time using what
the run logs in ``evaluations.jsonl``:

- ``round_times`` (Coordinator): ``agents_s`` (policy + learning since the agent's previous reply,
  the slower agent), ``coordination_s`` (Ray/Coordinator: first proposal in -> evaluation started, plus
  logging after it), ``evaluation_s`` (the evaluator call as the Coordinator saw it);
- ``times`` (evaluator): ``prune_s``, ``finetune_s``, ``fid_s``, ``kde_s`` and ``total_s``; the rest of
  ``total_s`` (MACs counting, saving the candidate) is ``eval_other_s``, and ``evaluation_s -
  total_s`` is the Ray call overhead (``ray_call_s``).

"Not evaluation" = agents + coordination + Ray call overhead, as a share of their sum with the
evaluator's own time. Rounds per hour come from the steady-state period (time between consecutive
rounds' ``finished_at``, round 0 excluded: it includes agent start-up) and end to end (search wall
time incl. start-up, teacher and uniform evaluations). The agents wait for each round's reward
before proposing the next pair, so one search evaluates one pair at a time: a second evaluator can
only help when a pool is shared; on a 2-core machine the pool is capped at what fits next to the two
agents (``agents.evaluator.evaluator_resources``), which the output reports as ``evaluators_granted``.

    python -m benchmarks.search_cost [CONFIG] [--set k=v] [--rounds 6] [--evaluators 1,2] [--work DIR]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/search_cost.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import ray
from rich.table import Table

from agents.driver import run_search, start_local_ray
from agents.evaluator import evaluator_resources
from benchmarks._shared import RESULTS_DIR, base_parser, fmt, load_cfg, machine_info, parse_list, print_table, write_results
from collabprune.records import EvaluationRecord, RoundTimes
from collabprune.runs import RunDir

#: Per-round parts, in table order: (key, label).
PARTS = [
    ("agents_s", "policy/agent"),
    ("coordination_s", "Ray coordination"),
    ("ray_call_s", "Ray call overhead"),
    ("prune_s", "pruning"),
    ("finetune_s", "fine-tuning"),
    ("fid_s", "FID"),
    ("kde_s", "KDE"),
    ("eval_other_s", "eval. other (MACs, save)"),
]
NOT_EVALUATION = ("agents_s", "coordination_s", "ray_call_s")


def parse_args() -> Any:
    parser = base_parser("search_cost", __doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="search rounds per run (default 6)")
    parser.add_argument("--evaluators", default="1,2", help="search.num_evaluators values to run")
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "search_cost_runs",
                        help="parent folder of the run directories (a fresh sub-folder per invocation)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds")
    return parser.parse_args()


def round_parts(record: EvaluationRecord) -> dict[str, float]:
    """One search round's time split into :data:`PARTS` (seconds)."""
    rt, t = record.round_times or RoundTimes(), record.times
    parts = {"prune_s": float(t.prune_s or 0.0), "finetune_s": float(t.finetune_s or 0.0),
             "fid_s": float(t.fid_s or 0.0), "kde_s": float(t.kde_s or 0.0)}
    total = float(t.total_s or 0.0)
    parts["eval_other_s"] = max(0.0, total - sum(parts.values()))
    parts["ray_call_s"] = max(0.0, float(rt.evaluation_s) - total)
    parts["agents_s"] = float(rt.agents_s)
    parts["coordination_s"] = float(rt.coordination_s)
    return parts


def analyse(run_dir: Path, cfg: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Mean per-round split, share not evaluation, and rounds per hour of one finished run."""
    records = RunDir.open(run_dir, cfg).search_records()
    per_round = [round_parts(r) for r in records]
    mean = {k: statistics.fmean(p[k] for p in per_round) for k, _ in PARTS}
    round_sum = sum(mean.values())
    finished = [r.round_times.finished_at for r in records
                if r.round_times is not None and r.round_times.finished_at is not None]
    periods = [b - a for a, b in zip(finished, finished[1:])]
    period = statistics.fmean(periods) if periods else round_sum
    return {
        "rounds": len(records),
        "per_round": per_round,
        "mean_s": mean,
        "mean_round_sum_s": round_sum,
        "share_not_evaluation": sum(mean[k] for k in NOT_EVALUATION) / round_sum if round_sum else None,
        "steady_period_s": period,
        "rounds_per_hour_steady": 3600.0 / period if period else None,
        "wall_s": summary["times"]["wall_s"],
        "rounds_per_hour_end_to_end": 3600.0 * len(records) / summary["times"]["wall_s"],
    }


def run_one(args: Any, evaluators: int, parent: Path) -> dict[str, Any]:
    """One short search with ``search.num_evaluators=evaluators``; its analysis (or the error)."""
    cfg = load_cfg(args.config, args.overrides,
                   [f"search.rounds={args.rounds}", f"search.num_evaluators={evaluators}"])
    run_dir = parent / f"evaluators_{evaluators}"
    start_local_ray(progress=True)  # the local Ray run_search would start, started here to query what it grants
    try:
        granted = evaluator_resources(evaluators)[0]
        print(f"[search_cost] num_evaluators={evaluators}: {granted} granted by the cluster "
              f"({ray.cluster_resources().get('CPU', 0):g} CPUs); {args.rounds} rounds in {run_dir}")
        t0 = time.time()
        try:
            summary = run_search(cfg, run_dir, progress=True)
        except Exception as err:  # noqa: BLE001 - reported, not hidden: e.g. a pool that does not fit
            return {"evaluators_requested": evaluators, "evaluators_granted": granted, "run_dir": run_dir,
                    "error": f"{type(err).__name__}: {err}", "wall_s": time.time() - t0}
    finally:
        ray.shutdown()
    return {"evaluators_requested": evaluators, "evaluators_granted": granted, "run_dir": run_dir,
            **analyse(run_dir, cfg, summary)}


def main() -> None:
    args = parse_args()
    if args.quick:
        args.rounds = 2
    parent = args.work / time.strftime("%Y%m%d-%H%M%S")
    t_start = time.time()
    runs = [run_one(args, n, parent) for n in parse_list(args.evaluators, int)]

    table = Table(title=f"One search round, mean of {args.rounds} rounds (seconds; share of the round)")
    table.add_column("part")
    for r in runs:
        table.add_column(f"{r['evaluators_requested']} eval. (granted {r['evaluators_granted']})", justify="right")
    ok = [r for r in runs if "mean_s" in r]
    for key, label in PARTS:
        table.add_row(label, *[f"{fmt(r['mean_s'][key], 3)} ({100 * r['mean_s'][key] / r['mean_round_sum_s']:.1f}%)"
                               if r in ok else "-" for r in runs])
    table.add_row("sum", *[fmt(r["mean_round_sum_s"], 4) if r in ok else "-" for r in runs])
    table.add_row("share not evaluation", *[f"{100 * r['share_not_evaluation']:.1f}%" if r in ok else "-" for r in runs])
    table.add_row("steady period (s/round)", *[fmt(r["steady_period_s"], 4) if r in ok else "-" for r in runs])
    table.add_row("rounds/hour (steady)", *[fmt(r["rounds_per_hour_steady"], 4) if r in ok else "-" for r in runs])
    table.add_row("rounds/hour (end to end)", *[fmt(r["rounds_per_hour_end_to_end"], 4) if r in ok else "-" for r in runs])
    table.add_row("error", *[r.get("error", "")[:60] for r in runs])
    print_table(table)
    write_results(args.out, {
        "benchmark": "search_cost",
        "config": args.config,
        "overrides": args.overrides,
        "args": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "out")},
        "machine": machine_info(),
        "notes": [
            "agents_s/coordination_s/evaluation_s come from the Coordinator's round_times; prune/finetune/fid/kde "
            "from the evaluator's times; ray_call_s = evaluation_s - total_s",
            "the agents wait for each reward, so a search evaluates one pair at a time whatever the pool size",
            "evaluators_granted = agents.evaluator.evaluator_resources(n) on the embedded cluster",
        ],
        "runs": runs,
        "wall_s": time.time() - t_start,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
