"""Reward fidelity (DESIGN.md §4.2): does the in-search reward rank candidates like the held-out result?

A fixed panel of generator candidates at one budget (D at the uniform D candidate) is scored twice:

- by the in-search reward (``CandidateEvaluator``: prune, adaptive BN, ``finetune.steps`` of
  fine-tuning, reward-split metrics against the seed-averaged uniform baseline), once per search seed
  (``--seeds``, default 0,1: each seed is a search's common seed with its own uniform baseline);
- by the held-out protocol of §4.1 (``HeldoutEvaluator``: ``finetune.final_steps`` of fine-tuning,
  test-split metrics), once per final seed (``--final-seeds``, default 0,1).

Panel (``panel()``, all projected onto the budget with ``ChannelSpace.project``): the uniform
candidate; 4 small perturbations of it (log2 multipliers ~ N(0, 0.25^2)); outer-heavy and
inner-heavy allocations (keep ratio ∝ (max channels / channels)^±p, p = 0.5 and 1); "inner cut" (the
widest groups at 0.35 of the uniform ratio); encoder-heavy and decoder-heavy (x1.5 on one half);
6 random ones (log2 multipliers uniform in [-1.5, 1.5]): 18 candidates.

``--panel finalists --finalists A.json[,B.json]`` scores the top of the search instead: the uniform
candidate and the distinct finalists (G and D ratios) of earlier ``benchmarks.quality`` runs at the
budget (``finalists_panel()``). The fixed panel spans good and bad allocations; this one holds only
allocations a search picked, so it measures what a search needs last: whether the proxy ranks the
best allocations among themselves. Per-term Spearman (each reward-split metric, lower = better,
against the held-out metric) is reported for both panels.

It prints, per budget: Spearman(proxy, held-out primary metric) for the seed-0 proxy and for the
proxy averaged over seeds, the proxy's test-retest Spearman (seed 0 vs seed 1), how many of the
held-out top 3 are the proxy's top 3 and the held-out rank of the proxy's best (what a search needs:
the winners found, whatever the order among the losers), the winner's drop
(the proxy's best candidate under one seed, re-scored under the other), the held-out noise floor
(mean std over final seeds) and which candidates beat uniform on the held-out metric by more than
twice the pooled standard error. Targets: Spearman >= 0.7, test-retest >= 0.8. The held-out results
are cached under ``--work`` (they do not depend on the reward settings), so a reward lever is
re-measured at the cost of the proxy alone.

    python -m benchmarks.proxy_fidelity [CONFIG] [--set k=v] [--budgets 0.25,0.1] [--seeds 0,1]
                                        [--final-seeds 0,1] [--tag NAME]
                                        [--panel finalists --finalists results.json[,...]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a file: python benchmarks/proxy_fidelity.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
from rich.table import Table

from benchmarks._shared import (RESULTS_DIR, base_parser, fmt, input_error, load_cfg, machine_info, parse_list, print_table,
                               read_quality_runs, spearman, write_results)
from collabprune.config import FD_METRICS, RunConfig
from collabprune.evaluation import CandidateEvaluator
from collabprune.heldout import HeldoutEvaluator, higher_is_better, primary_metric
from collabprune.io import atomic_write_json
from collabprune.pruning.space import ChannelSpace
from collabprune.runs import run_digest

#: Reward-split metrics (``EvaluationRecord.metrics``; lower is better) ranked one by one against the held-out
#: metric: the two Frechet-distance keys, the KDE objective, the balance term, the paired L1 and D's pull.
TERM_METRICS = (*FD_METRICS, "l_kde", "bal", "l1", "pull")

#: Config sections/fields that change the in-search proxy but not the held-out protocol. Of the reward
#: section only ``fid`` (the held-out FID and, for unpaired data, the primary metric) and ``kde`` (the
#: fine-tuning's KDE loss, when ``finetune.w_kde > 0``) enter the held-out key (:func:`heldout_key`), so a
#: reward lever added later (``w_l1``) never re-runs the held-out protocol.
PROXY_ONLY = {"search": None, "agents": None, "output": None, "finetune": ("steps", "search_lr")}


def parse_args() -> Any:
    parser = base_parser("proxy_fidelity", __doc__.split("\n")[0])
    parser.add_argument("--budgets", default=None, help="generator MACs budgets (default: the config's)")
    parser.add_argument("--seeds", default="0,1", help="search seeds of the in-search reward (default 0,1)")
    parser.add_argument("--final-seeds", default="0,1", help="final fine-tuning seeds of the held-out protocol")
    parser.add_argument("--tag", default="", help="name of this proxy setting in the JSON (e.g. the lever tried)")
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "proxy_fidelity_work", help="cache folder")
    parser.add_argument("--panel", choices=("fixed", "finalists"), default="fixed",
                        help="fixed: the 18 shaped allocations; finalists: the finalists of --finalists")
    parser.add_argument("--finalists", default="", help="benchmarks.quality result JSONs (comma-separated) "
                        "whose finalists make the panel under --panel finalists")
    args = parser.parse_args()
    if args.panel == "finalists" and not args.finalists:
        parser.error("--panel finalists needs --finalists results.json[,...]")
    if args.panel == "fixed" and args.finalists:
        parser.error("--finalists is read only under --panel finalists")
    args.finalist_runs = finalist_sources(parser, args.finalists)
    try:
        args.budget_list = parse_list(args.budgets) if args.budgets else []
        args.seed_list, args.final_seed_list = parse_list(args.seeds, int), parse_list(args.final_seeds, int)
    except ValueError as exc:
        parser.error(f"--budgets/--seeds/--final-seeds: numbers separated by commas ({exc})")
    if not args.seed_list or not args.final_seed_list:
        parser.error("--seeds and --final-seeds need at least one seed each")
    return args


def finalist_sources(parser: argparse.ArgumentParser, files: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(file stem, runs)`` of each file of a comma-separated ``--finalists`` (:func:`read_finalists`); a
    file that cannot be read or is not a quality result ends the parse through ``parser.error`` (exit 2)."""
    sources = []
    for name in parse_list(files, str):
        try:
            sources.append((Path(name).stem, read_finalists(Path(name))))
        except (OSError, ValueError) as exc:
            parser.error(f"--finalists {name}: {exc}")
    return sources


def read_finalists(path: Path) -> list[dict[str, Any]]:
    """The runs of a ``benchmarks.quality`` result file: ``budget``, ``method``, ``seed`` and the finalist's
    ``g_ratios`` / ``d_ratios`` of each.

    :raises OSError: the file cannot be read.
    :raises ValueError: it is not JSON, or not a quality result (no ``runs`` with those fields).
    """
    out = []
    for i, run in enumerate(read_quality_runs(path)):
        try:
            out.append({"budget": float(run["budget"]), "method": str(run["method"]), "seed": int(run["seed"]),
                        "g_ratios": [float(x) for x in run["finalist"]["g_ratios"]],
                        "d_ratios": [float(x) for x in run["finalist"]["d_ratios"]]})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"runs[{i}] is not a quality run ({type(exc).__name__}: {exc})") from None
    return out


class FinalistsError(ValueError):
    """A ``--finalists`` file does not fit the panel (wrong budget or network)."""


def searched_at(sources: list[tuple[str, list[dict[str, Any]]]], budget: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file stem, run)`` of every searched run (method not ``uniform``) at ``budget`` in ``sources``."""
    for stem, runs in sources:
        for run in runs:
            if run["method"] != "uniform" and math.isclose(run["budget"], budget, rel_tol=1e-9):
                yield stem, run


def finalists_panel(sources: list[tuple[str, list[dict[str, Any]]]], budget: float,
                    uniform: tuple[list[float], list[float]], g_groups: int, d_groups: int
                    ) -> dict[str, tuple[list[float], list[float]]]:
    """The panel of ``--panel finalists``: the uniform pair, then every distinct searched finalist at ``budget``.

    :param sources: ``(file stem, runs)`` per file (:func:`read_finalists`); a method ``uniform`` is skipped
        (the uniform pair is the panel's first member).
    :param budget: the generator budget (fraction of the teacher's MACs); runs at another budget are skipped.
    :param uniform: the uniform ``(G ratios, D ratios)`` at the budget.
    :param g_groups: prunable groups of G (every finalist's G vector must have this length).
    :param d_groups: prunable groups of D.
    :returns: name -> (G ratios, D ratios); names are ``method_s<seed>``, with ``@<file stem>`` where two
        files hold the same method and seed; a pair found twice is kept once (first name).
    :raises FinalistsError: a finalist's vectors do not fit the config's networks, or no finalist is at ``budget``.
    """
    members: dict[str, tuple[list[float], list[float]]] = {"uniform": uniform}
    seen = {json.dumps(uniform)}
    for stem, run in searched_at(sources, budget):
        g, d = run["g_ratios"], run["d_ratios"]
        if len(g) != g_groups or len(d) != d_groups:
            raise FinalistsError(f"{stem}: {run['method']} seed {run['seed']} has {len(g)} G / {len(d)} D "
                                 f"ratios; the config's networks have {g_groups} / {d_groups} groups")
        key = json.dumps((g, d))
        if key in seen:
            continue
        seen.add(key)
        name = f"{run['method']}_s{run['seed']}"
        if name in members:
            name = f"{name}@{stem}"
        unique, n = name, 2
        while unique in members:  # files that share a stem (runA/quality.json, runB/quality.json)
            unique, n = f"{name}#{n}", n + 1
        members[unique] = (g, d)
    if len(members) == 1:
        raise FinalistsError(f"no searched finalist other than the uniform pair at budget {budget:g} in "
                             f"{', '.join(s for s, _ in sources)}")
    return members


def panel(space: ChannelSpace, budget: float, seed: int = 0) -> dict[str, list[float]]:
    """The fixed panel of generator candidates at ``budget`` (see the module docstring).

    :param space: the generator's channel space.
    :param budget: MACs budget, fraction of the teacher's.
    :param seed: seed of the perturbed and random members.
    :returns: name -> projected keep ratios (insertion order = panel order; ``uniform`` first).
    """
    rng = np.random.default_rng([seed, 917])
    u = space.uniform_ratio(budget)
    ch = np.array([g.channels for g in space.groups], dtype=float)
    n = space.num_groups
    raw: dict[str, np.ndarray] = {"uniform": np.full(n, u)}
    for i in range(4):
        raw[f"perturbed_{i}"] = u * 2.0 ** rng.normal(0.0, 0.25, n)
    for p in (0.5, 1.0):
        raw[f"outer_heavy_{p:g}"] = u * (ch.max() / ch) ** p
        raw[f"inner_heavy_{p:g}"] = u * (ch / ch.max()) ** p
    cut = np.full(n, u)
    cut[ch == ch.max()] = 0.35 * u
    raw["inner_cut"] = cut
    half = n // 2
    enc, dec = np.full(n, u), np.full(n, u)
    enc[:half] *= 1.5
    dec[n - half:] *= 1.5
    raw["encoder_heavy"], raw["decoder_heavy"] = enc, dec
    for i in range(6):
        raw[f"random_{i}"] = u * 2.0 ** rng.uniform(-1.5, 1.5, n)
    return {name: space.project(list(np.maximum(r, 1e-6)), budget) for name, r in raw.items()}


def teacher_id(cand: CandidateEvaluator) -> str:
    """The teacher pair's identity in the caches: the SHA-256 of its G and D checkpoints (a teacher
    trained again, on this or another machine, is not bitwise the same and must not reuse results)."""
    return f"{cand.teacher_sha['G']}:{cand.teacher_sha['D']}"


def heldout_key(cfg: RunConfig, g: list[float], d: list[float], seed: int, teacher: str) -> str:
    """Cache key of one held-out evaluation: the config minus proxy-only fields, the ratios, the seed and
    the teacher (:func:`teacher_id`)."""
    data = cfg.to_dict()
    for section, names in PROXY_ONLY.items():
        if names is None:
            data.pop(section, None)
        else:
            for name in names:
                data.get(section, {}).pop(name, None)
    kept = {"fid"} if cfg.finetune.w_kde == 0 else {"fid", "kde"}  # without the KDE loss the fine-tuning ignores it
    data["reward"] = {k: v for k, v in data.get("reward", {}).items() if k in kept}
    blob = json.dumps({"cfg": data, "g": [round(x, 6) for x in g], "d": [round(x, 6) for x in d], "seed": seed,
                       "teacher": teacher}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def heldout_result(held: HeldoutEvaluator, g: list[float], d: list[float], seed: int, teacher: str, folder: Path,
                   label: str) -> dict[str, Any]:
    """One held-out evaluation (``HeldoutEvaluator.evaluate(g, d, seed)``, as a dict), cached in ``folder`` under
    :func:`heldout_key`; a new one is written atomically and reported on one line named ``label``."""
    path = folder / f"{heldout_key(held.cfg, g, d, seed, teacher)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.time()
    result = held.evaluate(g, d, seed).to_dict()
    atomic_write_json(path, result)
    primary = primary_metric(held.cfg)
    print(f"  [heldout] {label} seed {seed}: {primary} {fmt(result[primary])} ({time.time() - t0:.0f} s)", flush=True)
    return result


def run_budget(base_args: Any, budget: float, seeds: list[int], final_seeds: list[int]) -> dict[str, Any]:
    """Score the panel at one budget by the proxy (per seed) and the held-out protocol (per final seed)."""
    cfg = load_cfg(base_args.config, base_args.overrides, [f"pruning.budget.generator={budget}"])
    work = base_args.work / f"budget_{budget:g}"
    heldout_dir = work / "heldout"
    heldout_dir.mkdir(parents=True, exist_ok=True)
    cand = CandidateEvaluator(cfg, work / "evaluator")
    ug, ud = cand.uniform_ratios()
    if base_args.panel == "finalists":
        members = finalists_panel(base_args.finalist_runs, budget, (ug, ud), cand.g_space.num_groups,
                                  cand.d_space.num_groups)
    else:
        members = {name: (g, ud) for name, g in panel(cand.g_space, budget).items()}
    held = HeldoutEvaluator(cfg, work, candidates=cand)
    teacher = held.teacher().to_dict()
    primary = primary_metric(cfg)  # test L1 (pix2pix), fd_eval or FID (unpaired CycleGAN data)

    tid = teacher_id(cand)
    heldout = {name: [heldout_result(held, g, d, s, tid, heldout_dir, f"{budget:g} {name}") for s in final_seeds]
               for name, (g, d) in members.items()}

    proxy: dict[str, list[dict[str, Any]]] = {name: [] for name in members}
    proxy_dir = work / "proxy" / hashlib.sha256(f"{run_digest(cfg)}:{tid}".encode()).hexdigest()[:16]
    # proxy results per seed: the fixed panel's file is seed_<s>.json, a finalists panel's is named by what it
    # holds (the folder names the config, by run_digest, which ignores operational fields and fields added later
    # at their old value, and the teacher, so caches of other configs or teachers are not reused)
    prefix = "" if base_args.panel == "fixed" else \
        f"finalists_{hashlib.sha256(json.dumps(members, sort_keys=True).encode()).hexdigest()[:12]}_"
    proxy_dir.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        path = proxy_dir / f"{prefix}seed_{s}.json"
        if path.is_file():  # the same config (reward settings included) scored the same panel before
            for name, entry in json.loads(path.read_text()).items():
                proxy[name].append(entry)
            continue
        t0 = time.time()
        base = cand.evaluate_uniform(s)
        uniform_s = time.time() - t0
        scored: dict[str, dict[str, Any]] = {}
        for name, (g, d) in members.items():
            t0 = time.time()
            r = base if name == "uniform" else cand.evaluate(g, d, s, baseline=base.metrics)
            scored[name] = {"seed": s, "reward": r.reward, "terms": dict(r.reward_terms), "metrics": r.metrics.to_dict(),
                            "seconds": time.time() - t0 if name != "uniform" else uniform_s}
            proxy[name].append(scored[name])
        atomic_write_json(path, scored)
        print(f"  [proxy] {budget:g} seed {s} done", flush=True)

    names = list(members)
    sign = 1.0 if higher_is_better(primary) else -1.0

    def held_mean(name: str, metric: str = primary) -> float | None:
        vals = [r[metric] for r in heldout[name] if r.get(metric) is not None]
        return statistics.fmean(vals) if vals else None

    def held_std(name: str) -> float:
        vals = [r[primary] for r in heldout[name] if r.get(primary) is not None]
        return statistics.stdev(vals) if len(vals) > 1 else 0.0

    goodness = [None if held_mean(n) is None else sign * held_mean(n) for n in names]  # higher = better
    per_seed = [[p["reward"] for p in proxy[n]] for n in names]
    proxy0 = [v[0] for v in per_seed]
    proxy_mean = [statistics.fmean(v) for v in per_seed]
    retest = spearman([v[0] for v in per_seed], [v[1] for v in per_seed]) if len(seeds) > 1 else None
    drops = []
    for a in range(len(seeds)):
        for b in range(len(seeds)):
            if a != b:
                best = max(range(len(names)), key=lambda i: per_seed[i][a])
                drops.append(per_seed[best][a] - per_seed[best][b])
    rewards = [r for v in per_seed for r in v]
    noise = statistics.fmean([held_std(n) for n in names]) if len(final_seeds) > 1 else None
    u_mean = held_mean("uniform")
    beats = []
    for n in names:
        m = held_mean(n)
        if n == "uniform" or m is None or u_mean is None or noise is None:
            continue
        se = math.sqrt(2.0 * noise ** 2 / len(final_seeds)) if noise else 0.0
        diff = sign * (m - u_mean)
        if diff > 2 * se:
            beats.append({"name": n, "improvement": diff, "se": se})
    rows = []
    for i, n in enumerate(names):
        rows.append({"name": n, "g_ratios": members[n][0], "d_ratios": members[n][1],
                     "g_macs_fraction": heldout[n][0]["g_macs_fraction"],
                     "heldout": {m: held_mean(n, m) for m in ("l1", "psnr", "ssim", "fd_eval", "fid")},
                     "heldout_std": held_std(n), "proxy": per_seed[i],
                     "proxy_terms": [p["terms"] for p in proxy[n]],
                     "proxy_metrics": [p["metrics"] for p in proxy[n]],
                     "proxy_seconds": [p["seconds"] for p in proxy[n]]})
    searched = [i for i, n in enumerate(names) if n != "uniform"]
    term_spearman = {}
    unused_fd = set(FD_METRICS) - {cand.scorer.metric_name}  # the FD this config's scorer does not compute
    for key in (k for k in TERM_METRICS if k not in unused_fd):
        # lower is better for every reward-split metric; mean over the proxy seeds where all were measured
        vals = [[p["metrics"].get(key) for p in proxy[n]] for n in names]
        score = [-statistics.fmean(v) if v and all(isinstance(x, (int, float)) for x in v) else None for v in vals]
        measured = sum(x is not None for x in score)
        if measured < len(names):  # e.g. proxy results cached before the metric was recorded
            print(f"[proxy_fidelity] budget {budget:g}: {key} measured for {measured} of {len(names)} candidates"
                  + ("; its Spearman is over those" if measured else "; left out of the per-metric table"), flush=True)
        if measured:
            term_spearman[key] = {"all": spearman(score, goodness),
                                  "without_uniform": spearman([score[i] for i in searched],
                                                               [goodness[i] for i in searched]),
                                  "measured": measured}
    order_true = sorted(range(len(names)), key=lambda i: -(goodness[i] if goodness[i] is not None else -math.inf))
    order_proxy = sorted(range(len(names)), key=lambda i: -proxy0[i])
    top3 = len(set(order_true[:3]) & set(order_proxy[:3]))
    return {
        "budget": budget, "teacher": teacher, "rows": rows,
        "top3_overlap": top3,
        "heldout_rank_of_proxy_best": order_true.index(order_proxy[0]) + 1,
        "spearman_seed0": spearman(proxy0, goodness),
        "spearman_mean": spearman(proxy_mean, goodness),
        "spearman_mean_without_uniform": spearman([proxy_mean[i] for i in searched], [goodness[i] for i in searched]),
        "term_spearman": term_spearman,
        "test_retest": retest,
        "winner_drop": statistics.fmean(drops) if drops else None,
        "proxy_spread": statistics.pstdev(rewards) if len(rewards) > 1 else None,
        "heldout_noise_std": noise,
        "beat_uniform": beats,
        "proxy_seconds_per_candidate": statistics.fmean([s for r in rows for s in r["proxy_seconds"]]),
    }


def main() -> None:
    args = parse_args()
    t0 = time.time()
    base = load_cfg(args.config, args.overrides)
    if not args.budget_list and not isinstance(base.pruning.budget.generator, float):
        input_error("proxy_fidelity", "--budgets: the config's generator budget is a latency target; give MACs budgets")
    budgets = args.budget_list or [base.pruning.budget.generator]
    seeds, final_seeds = args.seed_list, args.final_seed_list
    if args.panel == "finalists":
        for b in budgets:
            if next(searched_at(args.finalist_runs, b), None) is None:
                input_error("proxy_fidelity", f"--finalists: no searched finalist at budget {b:g} in {args.finalists}")
    try:
        results = [run_budget(args, b, seeds, final_seeds) for b in budgets]
    except FinalistsError as exc:
        input_error("proxy_fidelity", f"--finalists: {exc}")
    primary = primary_metric(base)

    summary = Table(title=f"Reward fidelity (proxy: finetune.steps={base.finetune.steps}; held-out: "
                          f"final_steps={base.finetune.final_steps}, test {primary}) {args.tag}")
    for col in ("budget", "Spearman seed 0 (>= 0.7)", "Spearman mean", "without uniform", "test-retest (>= 0.8)",
                "top-3 overlap",
                "held-out rank of proxy's best", "winner drop", "proxy spread", f"held-out noise (std {primary})",
                "beat uniform", "s / candidate"):
        summary.add_column(col, justify="right")
    for r in results:
        summary.add_row(fmt(r["budget"], 3), fmt(r["spearman_seed0"], 3), fmt(r["spearman_mean"], 3),
                        fmt(r["spearman_mean_without_uniform"], 3),
                        fmt(r["test_retest"], 3), f"{r['top3_overlap']}/3", str(r["heldout_rank_of_proxy_best"]),
                        fmt(r["winner_drop"], 3), fmt(r["proxy_spread"], 3),
                        fmt(r["heldout_noise_std"], 3), ", ".join(b["name"] for b in r["beat_uniform"]) or "none",
                        fmt(r["proxy_seconds_per_candidate"], 3))
    print_table(summary)
    terms = Table(title=f"Spearman of each reward-split metric (seed mean, lower = better) with the held-out {primary}")
    for col in ("budget", "metric", "all members", "without uniform", "measured"):
        terms.add_column(col, justify="right")
    for r in results:
        for key, rho in r["term_spearman"].items():
            terms.add_row(fmt(r["budget"], 3), key, fmt(rho["all"], 3), fmt(rho["without_uniform"], 3),
                          f"{rho['measured']}/{len(r['rows'])}")
    print_table(terms)
    for r in results:
        t = r["teacher"]
        table = Table(title=f"Panel at {r['budget']:g} of G MACs (teacher: L1 {fmt(t['l1'])}, PSNR {fmt(t['psnr'])}, "
                            f"SSIM {fmt(t['ssim'])}, fd_eval {fmt(t['fd_eval'])})")
        for col in ("candidate", "G MACs frac", "test L1", f"± (seeds, {primary})", "PSNR", "SSIM", "fd_eval", "proxy per seed"):
            table.add_column(col, justify="left" if col == "candidate" else "right")
        best_first = -1.0 if higher_is_better(primary) else 1.0
        for row in sorted(r["rows"], key=lambda x: best_first * (x["heldout"][primary] or 0.0)):
            h = row["heldout"]
            table.add_row(row["name"], fmt(row["g_macs_fraction"], 4), fmt(h["l1"]), fmt(row["heldout_std"], 2),
                          fmt(h["psnr"]), fmt(h["ssim"]), fmt(h["fd_eval"]), " ".join(fmt(p, 4) for p in row["proxy"]))
        print_table(table)
    out = args.out
    if args.tag:
        out = out.with_name(f"{out.stem}_{args.tag}{out.suffix}")
    write_results(out, {"benchmark": "proxy_fidelity", "tag": args.tag, "config": args.config, "panel": args.panel,
                        "finalists": parse_list(args.finalists, str),
                        "overrides": args.overrides, "seeds": seeds, "final_seeds": final_seeds,
                        "finetune_steps": base.finetune.steps, "final_steps": base.finetune.final_steps,
                        "primary_metric": primary, "machine": machine_info(), "description": __doc__,
                        "results": results, "wall_s": time.time() - t0})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
