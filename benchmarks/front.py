"""One multi-budget search against separate single-budget searches of the same total evaluations.

Per search seed (``--seeds``):

- **multi**: one collaborative search with ``search.budgets`` = ``--budgets`` and ``--rounds`` R
  rounds on one evaluator, so K budgets x R rounds = R*K evaluations (R per budget), one policy per
  role that observes the budget; each budget's re-evaluated best (``front.json``) is its finalist.
- **single**: K collaborative searches, one per budget, R rounds each (R*K evaluations in all); each
  search's re-evaluated best (``best.json``) is its finalist.

Every finalist gets the same final fine-tuning (``finetune.final_steps``, ``--final-seeds`` seeds)
and is scored on the test split (:class:`collabprune.heldout.HeldoutEvaluator`), as in
``benchmarks/quality.py``. Reported per budget: the primary held-out metric (test L1 for pix2pix,
fd_eval for unpaired data) of both, the paired per-seed difference multi - single (positive = the
multi-budget search is better) with a bootstrap 95% interval and the seeds won, and the uniform
candidate's metric for reference. Everything is cached under ``--work`` and skipped when present.

    python -m benchmarks.front [CONFIG] [--set k=v] [--budgets 0.5,0.25,0.1] [--rounds 20]
                               [--seeds 0,1,2] [--final-seeds 2] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: python benchmarks/front.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

os.environ.setdefault("MPLBACKEND", "Agg")

from rich.table import Table

from benchmarks._shared import RESULTS_DIR, base_parser, fmt, fmt_pm, load_cfg, machine_info, mean_std, parse_list, print_table, write_results
from benchmarks.quality import final_results, paired
from collabprune.config import RunConfig
from collabprune.heldout import HeldoutEvaluator, primary_metric
from collabprune.io import atomic_write_json
from collabprune.runs import RunDir

METHODS = ("uniform", "single", "multi")


def parse_args(argv: Sequence[str] | None = None) -> Any:
    parser = base_parser("front", __doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.5,0.25,0.1", help="generator MACs budgets (default 0.5,0.25,0.1)")
    parser.add_argument("--rounds", type=int, default=20, help="search rounds per budget (default 20)")
    parser.add_argument("--seeds", default="0,1,2", help="search seeds (default 0,1,2)")
    parser.add_argument("--final-seeds", type=int, default=2, help="final fine-tuning seeds per finalist (default 2)")
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "front_work", help="cache folder")
    return parser.parse_args(argv)


def _search(cfg: RunConfig, run_dir: Path) -> RunDir:
    """``run_search`` into ``run_dir`` (resumed when it was started, skipped when it finished)."""
    from agents.driver import run_search

    if not (run_dir / "summary.json").is_file():
        run_search(cfg, run_dir, resume=(run_dir / "run.json").is_file(), progress=False)
    return RunDir.read(run_dir)


def finalists(args: Any, budgets: list[float], seed: int, work: Path) -> dict[str, dict[float, dict[str, Any]]]:
    """``{method: {budget: {"g_ratios", "d_ratios", "round", "slot", "reeval_reward"}}}`` of one seed,
    cached in ``work/finalists.json``."""
    path = work / "finalists.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        return {m: {float(b): v for b, v in per.items()} for m, per in cached.items()}
    common = [f"search.rounds={args.rounds}", f"search.seed={seed}", "search.num_evaluators=1"]

    def cfg_at(budget: float, more: Sequence[str] = ()) -> RunConfig:
        return load_cfg(args.config, args.overrides, [*common, f"pruning.budget.generator={budget}", *more])

    def entry(r: Any) -> dict[str, Any]:
        return {"g_ratios": r.g_ratios, "d_ratios": r.d_ratios, "round": r.round, "slot": r.slot or 0,
                "reeval_reward": r.reeval.reward if r.reeval is not None else None,
                "g_macs_fraction": r.metrics.g_macs_fraction}

    out: dict[str, dict[float, dict[str, Any]]] = {"uniform": {}, "single": {}, "multi": {}}
    t0 = time.time()
    multi = _search(cfg_at(budgets[0], [f"search.budgets=[{','.join(f'{b:g}' for b in budgets)}]"]), work / "multi")
    for k, r in enumerate(multi.read_front()):
        out["multi"][float(r.budget)] = entry(r)  # type: ignore[arg-type]
        u = multi.get(-1, slot=k)  # the uniform candidate of the budget (the same in every search)
        out["uniform"][float(r.budget)] = {"g_ratios": u.g_ratios, "d_ratios": u.d_ratios}  # type: ignore[union-attr]
    multi_s = time.time() - t0
    for b in budgets:
        print(f"[front] seed {seed}: single-budget search at {b:g}", flush=True)
        run = _search(cfg_at(b), work / f"single_{b:g}")
        best = run.read_best()
        assert best is not None
        out["single"][b] = entry(best)
    out["multi"][budgets[0]]["search_s"] = multi_s
    atomic_write_json(path, {m: {f"{b:g}": v for b, v in per.items()} for m, per in out.items()})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    t_start = time.time()
    budgets = parse_list(args.budgets)
    seeds = parse_list(args.seeds, int)
    base = load_cfg(args.config, args.overrides)
    primary = primary_metric(base)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        work = args.work / f"seed_{seed}"
        work.mkdir(parents=True, exist_ok=True)
        print(f"[front] seed {seed}: multi-budget search {budgets}, {args.rounds} rounds", flush=True)
        found = finalists(args, budgets, seed, work)
        final_seeds = [1000 * seed + i for i in range(args.final_seeds)]
        for b in budgets:
            cfg = load_cfg(args.config, args.overrides, [f"pruning.budget.generator={b}"])
            held = HeldoutEvaluator(cfg, args.work / "heldout_cache")
            for method in METHODS:
                fin = found[method][b]
                bwork = work / f"final_{b:g}"
                bwork.mkdir(parents=True, exist_ok=True)
                results = final_results(cfg, held, method, fin, final_seeds, bwork)
                runs.append({"budget": b, "seed": seed, "method": method, "finalist": fin, "heldout": results})

    summary, comparisons = [], {}
    for b in budgets:
        per_seed: dict[int, dict[str, float]] = {}
        for r in runs:
            if r["budget"] == b:
                vals = [h.get(primary) for h in r["heldout"] if h.get(primary) is not None]
                if vals:
                    per_seed.setdefault(r["seed"], {})[r["method"]] = sum(vals) / len(vals)
        for method in METHODS:
            m, s = mean_std([v.get(method) for v in per_seed.values()])
            summary.append({"budget": b, "method": method, primary: m, f"{primary}_std": s,
                            "n": sum(method in v for v in per_seed.values())})
        comparisons[f"{b:g}"] = {"multi_vs_single": paired(per_seed, "multi", "single", primary),
                                 "multi_vs_uniform": paired(per_seed, "multi", "uniform", primary),
                                 "single_vs_uniform": paired(per_seed, "single", "uniform", primary)}

    table = Table(title=f"multi-budget vs single-budget searches, {args.rounds} evaluations per budget each "
                        f"({len(seeds)} seeds; held-out {primary}, paired differences: positive = better)")
    for col in ("budget", "uniform", "single-budget searches", "multi-budget search", "multi - single (95% CI, wins)"):
        table.add_column(col, justify="right")
    for b in budgets:
        row = {s["method"]: s for s in summary if s["budget"] == b}
        c = comparisons[f"{b:g}"]["multi_vs_single"]
        diff = "-" if c is None else f"{fmt(c['mean'])} [{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}] {c['wins']}/{c['n']}"
        table.add_row(f"{b:g}", *(fmt_pm(row[m][primary], row[m][f"{primary}_std"]) for m in METHODS), diff)
    print_table(table)
    write_results(args.out, {
        "benchmark": "front", "config": str(args.config), "overrides": args.overrides, "budgets": budgets,
        "seeds": seeds, "rounds_per_budget": args.rounds, "final_seeds": args.final_seeds,
        "final_steps": base.finetune.final_steps, "primary_metric": primary, "machine": machine_info(),
        "summary": summary, "comparisons": comparisons, "runs": runs, "wall_s": time.time() - t_start,
    })


if __name__ == "__main__":
    main()
