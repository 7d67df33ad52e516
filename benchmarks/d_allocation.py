"""How much the discriminator's allocation moves a finalist's held-out result, and whether the reward sees it.

A search's finalist is a (G, D) pair, but the shipped product is G: D only shapes the final
adversarial fine-tuning. This benchmark crosses generator allocations with discriminator
allocations, both taken from the finalists of earlier ``benchmarks.quality`` runs (the uniform D is
always one of the Ds), and scores every pair (G_i, D_j) twice:

- by the held-out protocol of DESIGN.md §4.1 (``finetune.final_steps`` of fine-tuning, test split,
  ``--final-seeds``), cached with ``benchmarks.proxy_fidelity``'s held-out results (same folder, same
  keys), so pairs that benchmark scored are not fine-tuned again;
- by the in-search reward (``CandidateEvaluator``, ``--seeds``, against each seed's uniform baseline).

It prints, per G, the held-out primary metric of every D with its spread over the Ds (max - min)
next to the held-out noise (std over final seeds), and the Spearman, over that G's Ds, of the reward
with the held-out metric (does the reward see what D does to the final result?); per D, its mean
held-out difference to the uniform D over the Gs (positive = better than the uniform D).

    python -m benchmarks.d_allocation --budget 0.1 --finalists A.json[,B.json] --g collab_s1,collab_s0 \
        [--d NAME,...] [--seeds 0,1] [--final-seeds 0,1]

Names are those of ``proxy_fidelity --panel finalists`` (``method_s<seed>``, ``@<file stem>`` where two
files hold the same method and seed). ``--d`` defaults to every distinct D of the finalists.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/d_allocation.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

from rich.table import Table

from benchmarks._shared import (RESULTS_DIR, base_parser, fmt, input_error, load_cfg, machine_info, parse_list, print_table,
                               spearman, write_results)
from benchmarks.proxy_fidelity import FinalistsError, finalist_sources, finalists_panel, heldout_result, teacher_id
from collabprune.evaluation import CandidateEvaluator
from collabprune.heldout import HELDOUT_METRICS, HeldoutEvaluator, higher_is_better, primary_metric
from collabprune.io import atomic_write_json
from collabprune.runs import run_digest

Pair = tuple[list[float], list[float]]


def parse_args() -> Any:
    """The command line (module docstring); bad input ends it with one error line and exit code 2."""
    parser = base_parser("d_allocation", __doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=None, help="generator MACs budget (default: the config's)")
    parser.add_argument("--finalists", required=True, help="benchmarks.quality result files, comma-separated")
    parser.add_argument("--g", required=True, help="finalists whose G allocations are crossed with the Ds")
    parser.add_argument("--d", default="", help="finalists whose D allocations are used (default: all distinct)")
    parser.add_argument("--seeds", default="0,1", help="search seeds of the in-search reward")
    parser.add_argument("--final-seeds", default="0,1", help="final fine-tuning seeds of the held-out protocol")
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "proxy_fidelity_work",
                        help="cache folder (proxy_fidelity's: the held-out results are shared)")
    parser.add_argument("--tag", default="", help="suffix of the JSON file")
    args = parser.parse_args()
    try:
        args.seed_list, args.final_seed_list = parse_list(args.seeds, int), parse_list(args.final_seeds, int)
    except ValueError as exc:
        parser.error(f"--seeds/--final-seeds: integers separated by commas ({exc})")
    args.g_names, args.d_names = parse_list(args.g, str), parse_list(args.d, str) if args.d else []
    if not args.final_seed_list or not args.g_names:
        parser.error("--g and --final-seeds need at least one entry each")
    args.sources = finalist_sources(parser, args.finalists)
    return args


def grid(members: dict[str, Pair], g_names: list[str], d_names: list[str]) -> tuple[dict[str, list[float]],
                                                                                   dict[str, list[float]]]:
    """The Gs and Ds to cross: ``g_names``' G vectors, and the uniform D followed by ``d_names``' D vectors
    (default: every distinct D of ``members``), each distinct D once under its first name.

    :param members: the finalists panel (:func:`benchmarks.proxy_fidelity.finalists_panel`), uniform first.
    :raises FinalistsError: a name is not in the panel.
    """
    unknown = [n for n in [*g_names, *d_names] if n not in members]
    if unknown:
        raise FinalistsError(f"not a finalist at this budget: {', '.join(unknown)} (known: {', '.join(members)})")
    gs = {n: members[n][0] for n in g_names}
    ds: dict[str, list[float]] = {}
    for n in ["uniform", *(d_names or list(members))]:
        if members[n][1] not in ds.values():
            ds[n] = members[n][1]
    return gs, ds


def analyse(heldout: dict[str, dict[str, list[float]]], reward: dict[str, dict[str, list[float]]],
            higher_better: bool) -> dict[str, Any]:
    """The statistics of the module docstring.

    :param heldout: G name -> D name -> held-out primary metric per final seed.
    :param reward: G name -> D name -> in-search reward per seed (may be empty per pair).
    :param higher_better: the held-out metric's direction (test L1: False).
    :returns: ``per_g`` (spread over the Ds, noise, Spearman of the reward with the held-out metric, best and
        worst D) and ``per_d`` (mean held-out difference to the uniform D over the Gs, positive = better,
        and the Gs it is better for).
    """
    sign = 1.0 if higher_better else -1.0
    per_g, per_d = {}, {}
    for g, row in heldout.items():
        means = {d: statistics.fmean(v) for d, v in row.items() if v}  # a pair whose every final run diverged: left out
        noise = [statistics.stdev(v) for v in row.values() if len(v) > 1]
        ds = list(means)
        rewards = [statistics.fmean(reward[g][d]) if reward.get(g, {}).get(d) else None for d in ds]
        per_g[g] = {"spread": max(means.values()) - min(means.values()),
                    "noise": statistics.fmean(noise) if noise else None,
                    "best_d": max(ds, key=lambda d: sign * means[d]), "worst_d": min(ds, key=lambda d: sign * means[d]),
                    "reward_spearman": spearman([r if r is not None else float("nan") for r in rewards],
                                                 [sign * means[d] for d in ds]),
                    "reward_spread": (max(r for r in rewards if r is not None) - min(r for r in rewards if r is not None))
                    if any(r is not None for r in rewards) else None}
    for d in next(iter(heldout.values())):
        diffs = [sign * (statistics.fmean(row[d]) - statistics.fmean(row["uniform"])) for row in heldout.values()
                 if row[d] and row["uniform"]]
        per_d[d] = {"vs_uniform_d": statistics.fmean(diffs) if diffs else None, "better_for": sum(x > 0 for x in diffs),
                    "n": len(diffs)}
    return {"per_g": per_g, "per_d": per_d}


def main() -> None:
    """Score the G x D grid (held-out, then the reward), print the tables and write the JSON."""
    args = parse_args()
    t0 = time.time()
    budget = args.budget
    cfg = load_cfg(args.config, args.overrides, [] if budget is None else [f"pruning.budget.generator={budget}"])
    if not isinstance(cfg.pruning.budget.generator, float):
        input_error("d_allocation", "--budget: the config's generator budget is a latency target; give a MACs budget")
    budget = float(cfg.pruning.budget.generator)
    seeds, final_seeds = args.seed_list, args.final_seed_list
    work = args.work / f"budget_{budget:g}"
    cand = CandidateEvaluator(cfg, work / "evaluator")
    try:
        members = finalists_panel(args.sources, budget, cand.uniform_ratios(), cand.g_space.num_groups,
                                  cand.d_space.num_groups)
        gs, ds = grid(members, args.g_names, args.d_names)
    except FinalistsError as exc:
        input_error("d_allocation", f"--finalists/--g/--d: {exc}")
    primary = primary_metric(cfg)
    held = HeldoutEvaluator(cfg, work, candidates=cand)
    tid = teacher_id(cand)
    heldout: dict[str, dict[str, list[float]]] = {g: {} for g in gs}
    heldout_metrics: dict[str, dict[str, dict[str, float | None]]] = {g: {} for g in gs}  # seed means, every metric
    for g_name, g in gs.items():
        for d_name, d in ds.items():
            results = [heldout_result(held, g, d, s, tid, work / "heldout", f"G {g_name} D {d_name}")
                       for s in final_seeds]
            heldout[g_name][d_name] = [r[primary] for r in results if r.get(primary) is not None]
            heldout_metrics[g_name][d_name] = {
                m: statistics.fmean(v) if (v := [r[m] for r in results if r.get(m) is not None]) else None
                for m in HELDOUT_METRICS}
    reward: dict[str, dict[str, list[float]]] = {g: {d: [] for d in ds} for g in gs}
    proxy_dir = work / "d_allocation_proxy"
    proxy_dir.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        base = None
        for g_name, g in gs.items():
            for d_name, d in ds.items():
                key = hashlib.sha256(json.dumps({"cfg": run_digest(cfg), "teacher": tid, "g": g, "d": d, "seed": s},
                                                sort_keys=True).encode()).hexdigest()[:16]
                path = proxy_dir / f"{key}.json"
                if not path.is_file():
                    if base is None:
                        base = cand.evaluate_uniform(s)
                    atomic_write_json(path, {"reward": cand.evaluate(g, d, s, baseline=base.metrics).reward})
                reward[g_name][d_name].append(json.loads(path.read_text())["reward"])
    stats = analyse(heldout, reward, higher_is_better(primary))

    per_g = Table(title=f"Held-out test {primary} of each G with each D at {budget:g} of G MACs "
                        f"({cfg.finetune.final_steps} final steps x {len(final_seeds)} seeds); reward per D in brackets")
    per_g.add_column("D", justify="left")
    per_g.add_column("D ratios", justify="left")
    for g_name in gs:
        per_g.add_column(g_name, justify="right")
    per_g.add_column("vs uniform D (mean over Gs)", justify="right")
    for d_name, d in ds.items():
        cells = [fmt(statistics.fmean(heldout[g][d_name]) if heldout[g][d_name] else None, 4)
                 + (f" ({fmt(statistics.fmean(reward[g][d_name]), 3)})" if reward[g][d_name] else "") for g in gs]
        pd = stats["per_d"][d_name]
        per_g.add_row(d_name, " ".join(f"{x:.2f}" for x in d), *cells,
                      ("-" if pd["vs_uniform_d"] is None else f"{pd['vs_uniform_d']:+.4f}")
                      + f" ({pd['better_for']}/{pd['n']})")
    print_table(per_g)
    summary = Table(title="Per G: what the D choice does to the held-out result, and whether the reward sees it")
    for col in ("G", f"held-out spread over Ds ({primary})", "held-out noise (std)", "best D", "worst D",
                "reward spread over Ds", "Spearman(reward, held-out) over Ds"):
        summary.add_column(col, justify="left" if col == "G" else "right")
    for g_name, s in stats["per_g"].items():
        summary.add_row(g_name, fmt(s["spread"], 3), fmt(s["noise"], 2), s["best_d"], s["worst_d"],
                        fmt(s["reward_spread"], 3), fmt(s["reward_spearman"], 3))
    print_table(summary)
    out = args.out if not args.tag else args.out.with_name(f"{args.out.stem}_{args.tag}{args.out.suffix}")
    write_results(out, {"benchmark": "d_allocation", "config": args.config, "overrides": args.overrides,
                        "budget": budget, "finalists": parse_list(args.finalists, str), "seeds": seeds,
                        "final_seeds": final_seeds, "final_steps": cfg.finetune.final_steps, "primary_metric": primary,
                        "g": gs, "d": ds, "heldout": heldout, "heldout_metrics": heldout_metrics, "reward": reward,
                        **stats,
                        "machine": machine_info(), "description": __doc__, "wall_s": time.time() - t0})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
