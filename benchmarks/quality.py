"""Quality at equal MACs: the collaborative search against naive pruning, random search and TPE.

The referee of the search (issue "The collaborative search beats uniform, random and a strong non-RL
optimiser at equal MACs"). At each generator MACs budget (``--budgets``, fractions of the teacher's
physical MACs) and for each search seed (``--seeds``), every method yields ONE finalist (G ratios,
D ratios); every G finalist uses its budget within 2% (the projection of DESIGN.md §5) and the D
budget is the config's for every method:

``uniform``             the uniform candidate (one keep ratio for every group, projected).
``inner``               inner-layer pruning (CIL): levels of equal feature-map size, innermost first,
                        pruned to r_min until the budget is met; the level where it is met gets the
                        common ratio that meets it; projected (fill) onto the budget.
``global_l1``           torch-pruning's global L1-magnitude ranking (``MetaPruner``, ``global_pruning``,
                        ``GroupMagnitudeImportance(p=1)``), pruned step by step until the physical MACs
                        meet the budget; the kept channels as keep ratios, projected onto the budget.
``random``              random search in the agents' space: actions uniform in [-1, 1] per group of G
                        and of D, projected; scored by the in-search reward.
``tpe``                 Optuna's TPE sampler over the same actions (a strong non-RL optimiser),
                        ``n_startup_trials`` = the agents' warm-up rounds.
``g_alone``             the G agent alone (``search.agents=generator``: D at its uniform candidate).
``collab_no_exchange``  both agents, ``agents.exchange=false``.
``collab``              the collaborative search (both agents, exchange on).

Every searching method gets the same evaluations: ``search.rounds`` candidates scored by the same
in-search reward (the same evaluator, common seed, seed-averaged uniform baseline), then the same
top-k re-evaluation with fresh seeds (:mod:`collabprune.selection`) picks its finalist. Every finalist
then gets the SAME final fine-tuning (``finetune.final_steps``) under ``--final-seeds`` seeds tied to
the search seed (``1000 * seed + i``, so every method of one search seed sees the same final seeds)
and is measured on the TEST split (:class:`~collabprune.heldout.HeldoutEvaluator`: L1, PSNR, SSIM,
fd_eval, FID when the weights exist). The primary metric is test L1 (mean over the final seeds).

Reported per budget: each method's held-out metrics (mean ± std over search seeds), G and D MACs
fractions, and the paired per-seed differences in test L1 against uniform and against random, with
bootstrap 95% intervals (10 000 resamples of the per-seed differences) and the count of seeds won.
Per-evaluation logs of every search are kept in ``benchmarks/results/quality_logs/`` and the best-so-far
search reward against evaluations is plotted (mean and band over seeds) to
``benchmarks/results/quality_curves_<budget>.png`` (``--tag T``: ``quality_logs_T/`` and
``quality_curves_<budget>_T.png``, for runs under another config). Everything is cached under ``--work``: re-running
the same command continues where a killed one stopped.

``--uniform-d`` also scores the G half alone: every searched finalist's G with the uniform D, under the
same final seeds (cached as ``final_<method>_uniform_d_<seed>.json``), and reports the paired
differences against random search on it and what each finalist's own D adds to its G. The D only
shapes the final fine-tuning (the shipped product is G), and the in-search reward barely sees it
(``benchmarks/d_allocation.py``), so this separates what a search's G allocations are worth from
what its D allocations do.

    python -m benchmarks.quality [CONFIG] [--set k=v] [--budgets 0.25,0.1] [--seeds 0,1,2,3,4]
                                 [--final-seeds 2] [--rounds N] [--methods uniform,...] [--quick] [--uniform-d]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: python benchmarks/quality.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import torch
import torch_pruning as tp
from rich.table import Table
from torch import nn

from benchmarks._shared import (RESULTS_DIR, base_parser, fmt, fmt_pm, input_error, load_cfg, machine_info, parse_list,
                               print_table, write_results)
from collabprune.config import RunConfig
from collabprune.evaluation import CandidateEvaluator
from collabprune.heldout import HELDOUT_METRICS, PRIMARY_METRIC, HeldoutEvaluator, higher_is_better, primary_metric
from collabprune.io import atomic_write_json, atomic_write_text
from collabprune.metrics.macs import conv_layer_costs, macs
from collabprune.pruning.space import ChannelSpace
from collabprune.records import EvaluationRecord, ProposalInfo
from collabprune.runs import TEACHER_ROUND, UNIFORM_ROUND, RunDir, candidate_dir, resume_config, round_seed, run_digest
from collabprune.selection import reevaluate_top

METHODS = ("uniform", "inner", "global_l1", "random", "tpe", "g_alone", "collab_no_exchange", "collab")
LOCAL_SEARCHES = ("random", "tpe")
#: Config overrides of the agent searches.
AGENT_SEARCHES = {
    "g_alone": ["search.agents=generator", "agents.exchange=false"],
    "collab_no_exchange": ["agents.exchange=false"],
    "collab": [],
}
LOGS_DIR = RESULTS_DIR / "quality_logs"


def logs_dir(tag: str) -> Path:
    """Folder of the per-evaluation logs: ``quality_logs`` (``quality_logs_<tag>`` with ``--tag``)."""
    return LOGS_DIR.with_name(f"{LOGS_DIR.name}_{tag}") if tag else LOGS_DIR


def curves_path(budget: float, tag: str) -> Path:
    """The curves PNG of a budget: ``quality_curves_<budget>[_<tag>].png`` in ``benchmarks/results``."""
    return RESULTS_DIR / f"quality_curves_{budget:g}{'_' + tag if tag else ''}.png"


def parse_args() -> Any:
    parser = base_parser("quality", __doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.25,0.1", help="generator MACs budgets (default 0.25,0.1)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="search seeds (default 0,1,2,3,4)")
    parser.add_argument("--final-seeds", type=int, default=2, help="final fine-tuning seeds per search seed")
    parser.add_argument("--rounds", type=int, default=None, help="search.rounds of every search (default: config)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--tp-steps", type=int, default=200, help="torch-pruning iterative steps of global_l1")
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "quality_work", help="cache of runs and finalists")
    parser.add_argument("--tag", default="", help="suffix of the curves PNGs and the per-evaluation logs folder, "
                        "for runs under another config or settings (pair it with its own --work and --out)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, seed 0, first budget, 1 final seed")
    parser.add_argument("--uniform-d", action="store_true",
                        help="also score every searched finalist's G with the uniform D (the G half alone)")
    parser.add_argument("--cached-only", action="store_true",
                        help="tabulate only the (method, seed) runs whose finalist is cached; search nothing")
    args = parser.parse_args()
    try:
        args.budget_list, args.seed_list = parse_list(args.budgets), parse_list(args.seeds, int)
    except ValueError as exc:
        parser.error(f"--budgets/--seeds: numbers separated by commas ({exc})")
    if not args.budget_list or not args.seed_list:
        parser.error("--budgets and --seeds need at least one entry each")
    return args


# --------------------------------------------------------------------------- fixed allocations
def inner_layer_ratios(space: ChannelSpace, budget: float) -> list[float]:
    """Inner-layer pruning: levels (groups of equal feature-map size) from the innermost outwards go
    to r_min until the budget is met; the level where it is met gets the largest common ratio that
    meets it (bisection); outer levels stay whole. Then projected (fill) onto the budget."""
    cfg = space.cfg
    areas = sorted({g.feature_hw[0] * g.feature_hw[1] for g in space.groups})
    levels = [[g.index for g in space.groups if g.feature_hw[0] * g.feature_hw[1] == a] for a in areas]
    ratios = [1.0] * space.num_groups

    def with_level(level: list[int], r: float) -> list[float]:
        out = list(ratios)
        for i in level:
            out[i] = r
        return out

    for level in levels:
        if space.macs_fraction(with_level(level, cfg.r_min)) > budget:
            ratios = with_level(level, cfg.r_min)
            continue
        lo, hi = cfg.r_min, cfg.r_max
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if space.macs_fraction(with_level(level, mid)) <= budget else (lo, mid)
        ratios = with_level(level, lo)
        break
    return space.project(ratios, budget)


def global_l1_ratios(teacher_g: nn.Module, space: ChannelSpace, budget: float, steps: int) -> list[float]:
    """torch-pruning's global L1 ranking, pruned until the physical MACs meet the budget; projected."""
    pcfg = space.cfg
    model = copy.deepcopy(teacher_g).cpu().eval().requires_grad_(True)
    example = torch.zeros(space.input_shape)
    output_layer = list(conv_layer_costs(model, example))[-1]  # the never-pruned output layer
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True,
        pruning_ratio=1.0 - pcfg.r_min, max_pruning_ratio=1.0 - pcfg.r_min, iterative_steps=steps,
        ignored_layers=[model.get_submodule(output_layer)], round_to=pcfg.round_to,
    )
    for _ in range(steps):
        pruner.step()
        if macs(model, space.input_shape) <= budget * space.teacher_macs:
            break
    kept = [int(model.get_submodule(g.name).out_channels) for g in space.groups]
    return space.project([max(k, 1) / g.channels for k, g in zip(kept, space.groups)], budget)


# --------------------------------------------------------------------------- local searches
def _local_evaluate_many(ev: CandidateEvaluator) -> Any:
    return lambda jobs: [ev.evaluate(g, d, seed, baseline=None) for g, d, seed in jobs]


def local_search(method: str, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Random search or TPE with the agents' evaluations and selection, logged like a search run.

    The run directory holds the same files as an agent search's (teacher, uniform, one record per
    round, re-evaluations, best.json), so it resumes after a kill and is read the same way.
    """
    if (run_dir / "run.json").is_file():  # resumed as it ran (its own config: defaults may have changed since)
        cfg = resume_config(run_dir)
        run = RunDir.open(run_dir, cfg)
    else:
        run = RunDir.create(run_dir, cfg)
    ev = CandidateEvaluator(cfg, run_dir)
    if run.get(TEACHER_ROUND) is None:
        run.append(dataclasses.replace(ev.evaluate_teacher(), round=TEACHER_ROUND, seed=round_seed(cfg, TEACHER_ROUND)))
    uniform = run.get(UNIFORM_ROUND)
    if uniform is None:
        uniform = run.append(dataclasses.replace(
            ev.evaluate_uniform(round_seed(cfg, UNIFORM_ROUND), candidate_dir(run_dir, UNIFORM_ROUND)),
            round=UNIFORM_ROUND, seed=round_seed(cfg, UNIFORM_ROUND)))
    b = cfg.pruning.budget
    spaces = {"g": (ev.g_space, b.generator), "d": (ev.d_space, b.discriminator)}
    k_range = {role: cfg.search.log2_range(role) for role in spaces}
    uniform_ratio = {role: space.uniform_ratio(budget) for role, (space, budget) in spaces.items()}

    def to_ratios(role: str, actions: Sequence[float]) -> list[float]:
        space, budget = spaces[role]
        requested = [min(1.0, uniform_ratio[role] * 2.0 ** (k_range[role] * float(a))) for a in actions]
        return space.project(requested, budget)

    names = {role: [f"{role}{i}" for i in range(space.num_groups)] for role, (space, _) in spaces.items()}
    study = None
    if method == "tpe":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=cfg.search.seed, n_startup_trials=max(1, cfg.agents.warmup_episodes))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        dist = optuna.distributions.FloatDistribution(-1.0, 1.0)
        for record in run.search_records():  # resume: the study learns the logged trials again
            asked = [a for role in ("g", "d") for a in (record.proposal(role) or ProposalInfo()).actions or []]
            params = dict(zip(names["g"] + names["d"], asked))
            study.add_trial(optuna.trial.create_trial(params=params, distributions={n: dist for n in params},
                                                      value=float(record.reward)))  # type: ignore[arg-type]
    rng = np.random.default_rng([cfg.search.seed, 4242])
    for _ in range(run.completed_rounds()):  # resume: the same random draws as the original run
        rng.uniform(-1.0, 1.0, len(names["g"]) + len(names["d"]))
    for k in range(run.completed_rounds(), cfg.search.rounds):
        trial = None
        if study is not None:
            trial = study.ask()
            actions = {role: [trial.suggest_float(n, -1.0, 1.0) for n in names[role]] for role in ("g", "d")}
        else:
            draw = rng.uniform(-1.0, 1.0, len(names["g"]) + len(names["d"]))
            actions = {"g": list(draw[: len(names["g"])]), "d": list(draw[len(names["g"]):])}
        g, d = to_ratios("g", actions["g"]), to_ratios("d", actions["d"])
        seed = round_seed(cfg, k)
        result = ev.evaluate(g, d, seed, baseline=uniform.metrics)  # finalists are fine-tuned again
        record = run.append(dataclasses.replace(
            result, round=k, slot=0, seed=seed, g_ratios=g, d_ratios=d,
            proposals={role: ProposalInfo(actions=list(actions[role])) for role in ("g", "d")}))
        run.update_best(record)
        if study is not None and trial is not None:
            study.tell(trial, float(record.reward))  # type: ignore[arg-type]
    return _finalist(reevaluate_top(cfg, run, _local_evaluate_many(ev)))


def _finalist(best: EvaluationRecord) -> dict[str, Any]:
    """The finalist entry of a search's re-evaluated best record (``finalist_<method>.json``)."""
    return {"g_ratios": best.g_ratios, "d_ratios": best.d_ratios, "best_round": best.round,
            "reeval": best.reeval.to_dict() if best.reeval is not None else None}


def agent_search(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """``run_search`` (resumed when its run directory exists); its re-evaluated best pair."""
    from agents.driver import run_search

    if not (run_dir / "summary.json").is_file():
        resume = (run_dir / "run.json").is_file()  # resumed as it ran (its own config)
        run_search(resume_config(run_dir) if resume else cfg, run_dir, resume=resume, progress=False)
    best = RunDir.read(run_dir).read_best()
    assert best is not None
    return _finalist(best)


def export_log(run_dir: Path, out: Path) -> None:
    """A compact per-evaluation log of a search: round, slot, reward, MACs fractions, ratios."""
    run = RunDir.read(run_dir)
    lines = []
    for r in run.records():
        m = r.metrics
        lines.append(json.dumps({"round": r.round, "slot": r.slot or 0, "kind": r.kind,
                                 "reward": r.reward, "reward_terms": r.reward_terms,
                                 "g_macs_fraction": m.g_macs_fraction, "d_macs_fraction": m.d_macs_fraction,
                                 "g_ratios": r.g_ratios, "d_ratios": r.d_ratios}))
    for e in run.reevaluations():
        lines.append(json.dumps({"reeval_of": [e.round, e.slot], "seed": e.seed,
                                 "metrics": {"fd_teacher_d": e.metrics.fd_teacher_d, "fid": e.metrics.fid,
                                             "l_kde": e.metrics.l_kde, "bal": e.metrics.bal,
                                             "l1": e.metrics.number("l1"), "pull": e.metrics.number("pull")}}))
    atomic_write_text(out, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- finalists
def find_finalist(method: str, make_cfg: Any, budget: float, work: Path, tp_steps: int, tag: str = "") -> dict[str, Any]:
    """The finalist of one method for one (budget, seed); cached in ``work/finalist_<method>.json`` with the
    :func:`run_digest` of the config that found it; a search's per-evaluation log is copied to
    :func:`logs_dir` (``tag``).

    A cached finalist, or a search run directory left by a killed run, found under another config (other
    ``--set`` values against the same ``--work``) ends the run with one error line and exit code 2 instead
    of being reused; a finalist cached before the digest was stored is reused as it is. The check is strict
    for the fixed allocations too (uniform, inner, global_l1), whose ratios do not depend on the reward.
    """
    path = work / f"finalist_{method}.json"
    cfg = make_cfg(AGENT_SEARCHES.get(method, []))
    digest = run_digest(cfg)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("run_digest", digest) != digest:
            input_error("quality", f"{path}: found under another config (run digest {cached['run_digest']}, this "
                                   f"config's {digest}); give each config its own --work and --tag")
        return cached
    t0 = time.time()
    if method in ("uniform", "inner", "global_l1"):
        ev = CandidateEvaluator(cfg, work / "static_evaluator")
        ug, ud = ev.uniform_ratios()
        g = {"uniform": lambda: ug, "inner": lambda: inner_layer_ratios(ev.g_space, budget),
             "global_l1": lambda: global_l1_ratios(ev.teacher_g, ev.g_space, budget, tp_steps)}[method]()
        entry: dict[str, Any] = {"g_ratios": g, "d_ratios": ud}
    else:
        run_dir = work / f"search_{method}"
        found = run_digest(resume_config(run_dir)) if (run_dir / "run.json").is_file() else digest
        if found != digest:
            input_error("quality", f"{run_dir}: a search run under another config (run digest {found}, this "
                                   f"config's {digest}); give each config its own --work and --tag")
        entry = local_search(method, cfg, run_dir) if method in LOCAL_SEARCHES else agent_search(cfg, run_dir)
        logs = logs_dir(tag)
        logs.mkdir(parents=True, exist_ok=True)
        export_log(run_dir, logs / f"budget_{budget:g}_{method}_seed{cfg.search.seed}.jsonl")
    entry["find_s"] = time.time() - t0
    entry["run_digest"] = digest
    atomic_write_json(path, entry)
    return entry


def final_results(cfg: RunConfig, held: HeldoutEvaluator, method: str, finalist: dict[str, Any], seeds: list[int],
                  work: Path) -> list[dict[str, Any]]:
    """Held-out results of a finalist under each final seed (cached in ``work/final_<method>_<seed>.json``)."""
    out = []
    for s in seeds:
        path = work / f"final_{method}_{s}.json"
        if path.is_file():
            out.append(json.loads(path.read_text()))
            continue
        print(f"[quality] final fine-tuning of {method}, seed {s}", flush=True)
        result = held.evaluate(finalist["g_ratios"], finalist["d_ratios"], s).to_dict()
        atomic_write_json(path, result)
        out.append(result)
    return out


# --------------------------------------------------------------------------- statistics
def bootstrap_ci(values: Sequence[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return (float(arr.mean()), float(arr.mean())) if arr.size else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, (n, arr.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def heldout_mean(results: Sequence[dict[str, Any]], metric: str) -> float | None:
    """A finalist's score on ``metric``: the mean over its final seeds' held-out results (the ``heldout``
    list of a run); None when no result has the metric."""
    vals = [h[metric] for h in results if h.get(metric) is not None]
    return statistics.fmean(vals) if vals else None


def paired(per_seed: dict[int, dict[str, float]], method: str, reference: str,
           metric: str = PRIMARY_METRIC) -> dict[str, Any] | None:
    """Paired per-seed improvement of ``method`` over ``reference`` on ``metric`` (the primary held-out
    metric; positive = better)."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    diffs = [sign * (v[method] - v[reference]) for v in per_seed.values() if method in v and reference in v]
    if not diffs:
        return None
    lo, hi = bootstrap_ci(diffs)
    return {"mean": statistics.fmean(diffs), "ci95": [lo, hi], "wins": sum(d > 0 for d in diffs), "n": len(diffs),
            "diffs": diffs}


def read_log(budget: float, method: str, seed: int, tag: str = "") -> list[dict[str, Any]] | None:
    """The per-evaluation log of one search (``budget_<b>_<method>_seed<s>.jsonl`` in :func:`logs_dir` of
    ``tag``): one dict per evaluated candidate (``round``, ``kind`` teacher/uniform/search, ``reward``, the
    G and D keep ratios, MACs fractions); None when the search has no log."""
    log = logs_dir(tag) / f"budget_{budget:g}_{method}_seed{seed}.jsonl"
    if not log.is_file():
        return None
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


def plot_curves(budget: float, methods: Sequence[str], seeds: Sequence[int], path: Path, tag: str = "") -> Path | None:
    """Best-so-far search reward against evaluations, mean and min-max band over seeds, one line per method
    (from the logs in :func:`logs_dir` of ``tag``)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from collabprune.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for method in methods:
        curves = []
        for s in seeds:
            rows = read_log(budget, method, s, tag)
            if rows is None:
                continue
            uniform = next((r["reward"] for r in rows if r.get("kind") == "uniform"), None)
            search = [r["reward"] for r in rows if r.get("kind") == "search" and r.get("reward") is not None]
            best, run = [], uniform if uniform is not None else -math.inf
            for v in search:
                run = max(run, v)
                best.append(run)
            if best:
                curves.append(best)
        if not curves:
            continue
        n = min(len(c) for c in curves)
        arr = np.array([c[:n] for c in curves])
        xs = np.arange(1, n + 1)
        ax.plot(xs, arr.mean(0), label=f"{method} ({len(curves)} seeds)")
        ax.fill_between(xs, arr.min(0), arr.max(0), alpha=0.15)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best search reward so far")
    ax.set_title(f"search progress at {budget:g} of the teacher's G MACs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    t_start = time.time()
    extra = [f"search.rounds={args.rounds}"] if args.rounds else []
    budgets, seeds = args.budget_list, args.seed_list
    methods = parse_list(args.methods, str)
    unknown = set(methods) - set(METHODS)
    if unknown:
        input_error("quality", f"--methods: unknown {sorted(unknown)} (allowed: {', '.join(METHODS)})")
    for needed in ("uniform", "random"):
        if needed not in methods:
            methods.insert(0, needed)  # the references of the paired differences
    final_n = args.final_seeds
    if args.quick:
        extra = [f"search.rounds={args.rounds or 3}"]
        seeds, budgets, final_n = seeds[:1], budgets[:1], 1

    base = load_cfg(args.config, args.overrides, extra)
    runs: list[dict[str, Any]] = []
    teacher: dict[str, Any] = {}
    for budget in budgets:
        for seed in seeds:
            sets = [*extra, f"pruning.budget.generator={budget}", f"search.seed={seed}"]
            work = args.work / f"budget_{budget:g}" / f"seed_{seed}"
            work.mkdir(parents=True, exist_ok=True)

            def make_cfg(more: Sequence[str], sets: list[str] = sets) -> RunConfig:
                return load_cfg(args.config, args.overrides, [*sets, *more])

            final_seeds = [1000 * seed + i for i in range(final_n)]
            held = None
            for method in methods:
                if args.cached_only and not (work / f"finalist_{method}.json").is_file():
                    print(f"[quality] budget {budget:g} seed {seed}: {method} not cached, left out", flush=True)
                    continue
                print(f"[quality] budget {budget:g} seed {seed}: {method}", flush=True)
                finalist = find_finalist(method, make_cfg, budget, work, args.tp_steps, args.tag)
                if held is None:
                    held = HeldoutEvaluator(make_cfg([]), args.work / f"budget_{budget:g}" / "heldout_cache")
                    if not teacher:
                        teacher = held.teacher().to_dict()
                results = final_results(make_cfg([]), held, method, finalist, final_seeds, work)
                run = {"budget": budget, "seed": seed, "method": method, "final_seeds": final_seeds,
                       "finalist": finalist, "heldout": results}
                if args.uniform_d and method != "uniform":
                    uniform_d = find_finalist("uniform", make_cfg, budget, work, args.tp_steps, args.tag)["d_ratios"]
                    run["heldout_uniform_d"] = results if finalist["d_ratios"] == uniform_d else final_results(
                        make_cfg([]), held, f"{method}_uniform_d", {"g_ratios": finalist["g_ratios"], "d_ratios": uniform_d},
                        final_seeds, work)
                runs.append(run)

    primary = primary_metric(base)  # test L1 for pix2pix, fd_eval (or FID) for unpaired CycleGAN data
    summary: list[dict[str, Any]] = []
    comparisons: dict[str, Any] = {}
    for budget in budgets:
        per_seed: dict[int, dict[str, float]] = {}
        per_seed_ud: dict[int, dict[str, float]] = {}  # --uniform-d: every finalist's G with the uniform D
        for r in runs:
            if r["budget"] != budget:
                continue
            for key, into in (("heldout", per_seed), ("heldout_uniform_d", per_seed_ud)):
                results = r.get(key, r["heldout"] if r["method"] == "uniform" and args.uniform_d else [])
                value = heldout_mean(results, primary)
                if value is not None:
                    into.setdefault(r["seed"], {})[r["method"]] = value
        for method in methods:
            mine = [r for r in runs if r["budget"] == budget and r["method"] == method]
            row: dict[str, Any] = {"budget": budget, "method": method, "seeds": [r["seed"] for r in mine]}
            for metric in (*HELDOUT_METRICS, "g_macs_fraction", "d_macs_fraction", "g_macs", "g_params"):
                per = [statistics.fmean([h[metric] for h in r["heldout"] if h.get(metric) is not None])
                       for r in mine if any(h.get(metric) is not None for h in r["heldout"])]
                row[metric] = [statistics.fmean(per), statistics.stdev(per) if len(per) > 1 else 0.0] if per else [None, None]
            noise = [statistics.stdev([h[primary] for h in r["heldout"]]) for r in mine
                     if len(r["heldout"]) > 1 and all(h.get(primary) is not None for h in r["heldout"])]
            row["final_seed_std"] = statistics.fmean(noise) if noise else None
            row["vs_uniform"] = paired(per_seed, method, "uniform", primary) if method != "uniform" else None
            row["vs_random"] = paired(per_seed, method, "random", primary) if method != "random" else None
            if args.uniform_d and method != "uniform":
                ud = [per_seed_ud[s][method] for s in per_seed_ud if method in per_seed_ud[s]]
                row["uniform_d"] = {
                    primary: [statistics.fmean(ud), statistics.stdev(ud) if len(ud) > 1 else 0.0] if ud else [None, None],
                    "own_d_gain": paired({s: {"own": per_seed[s][method], "uniform_d": v[method]}
                                          for s, v in per_seed_ud.items() if method in v and method in per_seed.get(s, {})},
                                         "own", "uniform_d", primary),
                    "vs_random": paired(per_seed_ud, method, "random", primary) if method != "random" else None}
            summary.append(row)
        comparisons[str(budget)] = {"per_seed": per_seed, "per_seed_uniform_d": per_seed_ud,
                                    "curves": str(plot_curves(budget, [m for m in methods if m in AGENT_SEARCHES or m in LOCAL_SEARCHES],
                                                              seeds, curves_path(budget, args.tag), args.tag))}

    table = Table(title=f"Quality at equal G MACs: test split after {base.finetune.final_steps} final fine-tuning steps "
                        f"x {final_n} seeds (mean ± std over search seeds {seeds}); paired test-{primary} improvement "
                        "(positive = better) with bootstrap 95% CI and seeds won")
    for col in ("budget", "method", "test L1", "PSNR", "SSIM", "fd_eval", "G MACs", "D MACs", "vs uniform", "vs random"):
        table.add_column(col, justify="left" if col == "method" else "right")
    table.add_row("teacher", "-", fmt(teacher.get("l1")), fmt(teacher.get("psnr")), fmt(teacher.get("ssim")),
                  fmt(teacher.get("fd_eval")), "1", "1", "-", "-")

    def cmp(c: dict[str, Any] | None) -> str:
        if not c:
            return "-"
        return f"{c['mean']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] {c['wins']}/{c['n']}"

    for row in summary:
        table.add_row(fmt(row["budget"], 3), row["method"], fmt_pm(*row["l1"]), fmt_pm(*row["psnr"]), fmt_pm(*row["ssim"]),
                      fmt_pm(*row["fd_eval"]), fmt_pm(*row["g_macs_fraction"]), fmt_pm(*row["d_macs_fraction"]),
                      cmp(row["vs_uniform"]), cmp(row["vs_random"]))
    print_table(table)
    if args.uniform_d:
        half = Table(title=f"The G half alone: each searched finalist's G with the uniform D (same final seeds); "
                           f"test {primary} with its own D and with the uniform D, what its own D adds (positive = "
                           "better) and the paired difference against random search with the uniform D")
        for col in ("budget", "method", "own D", "uniform D", "own D's gain", "vs random, uniform D"):
            half.add_column(col, justify="left" if col == "method" else "right")
        for row in summary:
            if "uniform_d" in row:
                half.add_row(fmt(row["budget"], 3), row["method"], fmt_pm(*row[primary]), fmt_pm(*row["uniform_d"][primary]),
                             cmp(row["uniform_d"]["own_d_gain"]), cmp(row["uniform_d"]["vs_random"]))
        print_table(half)
    write_results(args.out, {
        "benchmark": "quality", "config": args.config, "overrides": args.overrides,
        "args": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "out")},
        "budgets": budgets, "seeds": seeds, "methods": methods, "final_seeds_per_search_seed": final_n,
        "search_rounds": base.search.rounds, "reeval": {"top_k": base.search.reeval_top_k, "seeds": base.search.reeval_seeds},
        "final_steps": base.finetune.final_steps, "primary_metric": primary, "machine": machine_info(),
        "description": __doc__, "teacher": teacher, "summary": summary, "comparisons": comparisons, "runs": runs,
        "wall_s": time.time() - t_start,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
