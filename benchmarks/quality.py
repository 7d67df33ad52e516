"""Quality at equal generator budget: the collaborative search against six other ways to prune.

At each generator MACs budget (``--budgets``, fractions of the teacher's physical MACs; default the
config's ``pruning.budget.generator``) and for each seed (``--seeds``: ``search.seed`` of the searches
and the seed of the final fine-tuning), every method yields ONE finalist (G ratios, D ratios):

``uniform``             one keep ratio for every G group, the largest meeting the budget
                        (``CandidateEvaluator.uniform_ratios``).
``global_l1``           torch-pruning's global L1-magnitude ranking (``MetaPruner``, ``global_pruning=True``,
                        ``GroupMagnitudeImportance(p=1)`` with its default mean reduction/normaliser,
                        output layer ignored, ``max_pruning_ratio = 1 - r_min``, ``round_to`` of the
                        config), pruned step by step (``--tp-steps`` steps towards removing
                        ``1 - r_min`` of the channels) until the physical MACs meet the budget. The kept
                        channels of each of our groups (matched by root layer name) become keep ratios;
                        if rounding/``min_channels`` puts the candidate over budget, single ``round_to``
                        steps are removed where they save the most MACs until it fits.
``inner``               inner-layer pruning: groups are ordered by their root layer's output feature-map
                        size, smallest first (= nearest the bottleneck; groups of equal size form one
                        level: a U-Net's down and up convolutions at one resolution, a ResNet's residual
                        blocks and residual stream). Levels are pruned from the innermost outwards:
                        every level inside the current one is at ``r_min``, the current level gets the
                        largest common ratio that meets the budget (bisection), outer levels stay whole.
``random``              random search with the agents' evaluation count (``search.rounds`` + the teacher
                        and uniform evaluations): each round draws one action in [-1, 1] per group for G
                        and for D and pushes it through the env's AMC budget correction
                        (``RoleSpace.action_to_ratio`` + ``max_feasible_ratio``, group by group); the best
                        reward (uniform included, as in a search's ``best.json``) wins.
``g_alone``             the G agent alone: ``run_search`` with an evaluator that keeps D whole (every
                        D proposal is replaced by all ones before evaluation, also for the uniform
                        baseline), ``pruning.budget.discriminator=1.0`` and ``agents.exchange=false``.
                        The D agent still runs (the driver always starts both) but its actions change
                        nothing: the reward depends on G's proposal only.
``collab``              the collaborative search, both agents, exchange on (``run_search(cfg)``).
``collab_no_exchange``  the same with ``agents.exchange=false``.

The first three methods keep D at the uniform D candidate of the config's D budget.

Every finalist then gets the SAME final fine-tuning: a ``CandidateEvaluator`` on the config with
``finetune.steps = finetune.final_steps`` evaluates it (the uniform finalist first, as the reward
baseline) and saves the fine-tuned pair; the generator is rebuilt from its spec
(``build_from_spec`` + ``load_state_dict``) and measured on the TEST split: FID (or the labelled
fallback ``fd_teacher_d``), ``L_kde`` (``finetune.kde_loss``), L1 to the ground truth, MACs (both
conventions), params and CPU latency (``measure_latency``). The table reports mean ± std over seeds
and marks the winner per budget: the lowest mean test FID (or ``fd_teacher_d``).

Work is cached under ``--work`` (run directories, finalists, final evaluations): re-running the same
command continues where a killed one stopped.

    python -m benchmarks.quality [CONFIG] [--set k=v] [--budgets 0.25,0.5] [--seeds 0,1,2]
                                 [--rounds N] [--methods uniform,...] [--final-steps N] [--quick]
"""

from __future__ import annotations

import copy
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a file: python benchmarks/quality.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import ray
import torch
import torch_pruning as tp
from rich.table import Table
from torch import nn

import benchmarks._shared as shared
from agents.driver import run_search
from benchmarks._shared import (
    RESULTS_DIR, WholeDiscriminatorEvaluator, base_parser, fmt, fmt_pm, load_cfg, machine_info, mean_std,
    parse_list, print_table, write_results,
)
from collabprune.config import RunConfig
from collabprune.data import make_dataset
from collabprune.evaluation import CandidateEvaluator
from collabprune.finetune import kde_loss
from collabprune.io import atomic_write_json
from collabprune.metrics.fid import FidScorer
from collabprune.metrics.latency import measure_latency
from collabprune.metrics.macs import conv_layer_costs, macs, macs_published, params
from collabprune.models.loading import load_state_dict_strict, read_state_dict
from collabprune.models.subnet import NETWORK_FILES, SPEC_FILES, build_from_spec
from collabprune.objectives import teacher_d_features
from collabprune.pruning.prune import kept_channels
from collabprune.pruning.space import ChannelSpace
from collabprune.pruning.spec import SubnetSpec
from collabprune.runs import UNIFORM_ROUND, round_seed
from envs.space import RoleSpace

# the G-alone evaluator lives in benchmarks/, which Ray workers may not import: ship it by value
ray.cloudpickle.register_pickle_by_value(shared)

METHODS = ("uniform", "global_l1", "inner", "random", "g_alone", "collab", "collab_no_exchange")
#: Config overrides of the agent searches.
SEARCH_OVERRIDES = {
    "g_alone": ["pruning.budget.discriminator=1.0", "agents.exchange=false"],
    "collab": [],
    "collab_no_exchange": ["agents.exchange=false"],
}


def parse_args() -> Any:
    parser = base_parser("quality", __doc__.split("\n")[0])
    parser.add_argument("--budgets", default=None, help="generator MACs budgets (default: the config's)")
    parser.add_argument("--seeds", default="0,1,2", help="search / final fine-tuning seeds (default 0,1,2)")
    parser.add_argument("--rounds", type=int, default=None, help="search.rounds of every search (default: config)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--final-steps", type=int, default=None, help="final fine-tuning steps (default finetune.final_steps)")
    parser.add_argument("--tp-steps", type=int, default=200, help="torch-pruning iterative steps of global_l1")
    parser.add_argument("--latency-repeats", type=int, default=10, help="timed forwards of the CPU latency")
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "quality_work", help="cache of runs and finalists")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds, seed 0, first budget, final_steps = finetune.steps, 2 latency repeats")
    return parser.parse_args()


# --------------------------------------------------------------------------- ratio helpers
def ratio_for_kept(channels: int, kept: int, cfg: Any) -> float:
    """The largest keep ratio whose :func:`kept_channels` is at most ``kept`` (1.0 for the whole group)."""
    if kept >= channels:
        return 1.0
    r = kept / channels
    if kept_channels(channels, r, cfg) == kept:
        return r
    lo, hi = 1e-6, 1.0  # kept is not reachable exactly (min_channels / rounding): stay below it
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kept_channels(channels, mid, cfg) <= kept else (lo, mid)
    return lo


def fit_to_budget(space: ChannelSpace, kept: list[int], budget: float) -> list[int]:
    """Lower ``kept`` one ``round_to`` step at a time (where a step saves most MACs) until it fits."""
    cfg = space.cfg
    floor = [kept_channels(g.channels, cfg.r_min, cfg) for g in space.groups]
    kept = list(kept)
    while space.macs_of_kept(kept) > budget * space.teacher_macs:
        best, best_saving = None, 0
        for i in range(len(kept)):
            if kept[i] <= floor[i]:
                continue
            trial = list(kept)
            trial[i] = max(floor[i], kept[i] - cfg.round_to)
            saving = space.macs_of_kept(kept) - space.macs_of_kept(trial)
            if saving > best_saving:
                best, best_saving = trial, saving
        if best is None:
            raise RuntimeError("global_l1: cannot bring the candidate within its budget")
        kept = best
    return kept


def global_l1_ratios(teacher_g: nn.Module, space: ChannelSpace, budget: float, steps: int) -> tuple[list[float], dict[str, Any]]:
    """Keep ratios of torch-pruning's global L1-magnitude pruning to ``budget`` (see module docstring)."""
    pcfg = space.cfg
    model = copy.deepcopy(teacher_g).cpu().eval().requires_grad_(True)
    example = torch.zeros(space.input_shape)
    output_layer = list(conv_layer_costs(model, example))[-1]  # the never-pruned output layer
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True,
        pruning_ratio=1.0 - pcfg.r_min, max_pruning_ratio=1.0 - pcfg.r_min, iterative_steps=steps,
        ignored_layers=[model.get_submodule(output_layer)], round_to=pcfg.round_to,
    )
    done = 0
    for done in range(1, steps + 1):
        pruner.step()
        if macs(model, space.input_shape) <= budget * space.teacher_macs:
            break
    tp_fraction = macs(model, space.input_shape) / space.teacher_macs
    tp_kept = [int(model.get_submodule(g.name).out_channels) for g in space.groups]
    rounded = [kept_channels(g.channels, max(k, 1) / g.channels, pcfg) for g, k in zip(space.groups, tp_kept)]
    kept = fit_to_budget(space, rounded, budget)
    ratios = [ratio_for_kept(g.channels, k, pcfg) for g, k in zip(space.groups, kept)]
    assert space.macs_fraction(ratios) <= budget + 1e-12, "global_l1 candidate over budget"
    return ratios, {"tp_steps_taken": done, "tp_macs_fraction": tp_fraction, "tp_kept": tp_kept,
                    "kept": space.kept(ratios), "macs_fraction": space.macs_fraction(ratios)}


def inner_layer_ratios(space: ChannelSpace, budget: float) -> tuple[list[float], dict[str, Any]]:
    """Keep ratios of inner-layer pruning to ``budget`` (levels by feature-map size, innermost first)."""
    cfg = space.cfg
    areas = sorted({g.feature_hw[0] * g.feature_hw[1] for g in space.groups})
    levels = [[g.index for g in space.groups if g.feature_hw[0] * g.feature_hw[1] == a] for a in areas]
    ratios = [1.0] * space.num_groups

    def with_level(level: list[int], r: float) -> list[float]:
        out = list(ratios)
        for i in level:
            out[i] = r
        return out

    for depth, level in enumerate(levels):
        if space.macs_fraction(with_level(level, cfg.r_min)) > budget:
            ratios = with_level(level, cfg.r_min)  # not enough: this level at r_min, move outwards
            continue
        lo, hi = cfg.r_min, cfg.r_max
        if space.macs_fraction(with_level(level, hi)) <= budget:
            lo = hi
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if space.macs_fraction(with_level(level, mid)) <= budget else (lo, mid)
        ratios = with_level(level, lo)
        return ratios, {"levels": levels, "levels_pruned": depth + 1, "level_ratio": lo,
                        "kept": space.kept(ratios), "macs_fraction": space.macs_fraction(ratios)}
    raise RuntimeError("inner: budget not met with every group at r_min (check_budget should have caught it)")


def random_proposal(space: RoleSpace, rng: np.random.Generator) -> list[float]:
    """One random proposal through the env's AMC budget correction (group by group)."""
    decided: list[float] = []
    for _ in range(space.n_groups):
        wanted = space.action_to_ratio(float(rng.uniform(-1.0, 1.0)))
        decided.append(space.max_feasible_ratio(decided, wanted))
    return decided


# --------------------------------------------------------------------------- the methods
def random_search(ev: CandidateEvaluator, cfg: RunConfig, budget: float) -> dict[str, Any]:
    """Random search with the agents' evaluation budget; the best pair by reward (uniform included)."""
    b = cfg.pruning.budget
    g_space, d_space = RoleSpace("generator", ev.g_space, b.generator), RoleSpace("discriminator", ev.d_space, b.discriminator)
    rng = np.random.default_rng([cfg.search.seed, int(round(budget * 1e6))])
    ug, ud = ev.uniform_ratios()
    uniform = ev.evaluate(ug, ud, round_seed(cfg, UNIFORM_ROUND), baseline=None)
    best = {"round": UNIFORM_ROUND, "reward": uniform["reward"], "g_ratios": ug, "d_ratios": ud}
    history = []
    for k in range(cfg.search.rounds):
        g, d = random_proposal(g_space, rng), random_proposal(d_space, rng)
        result = ev.evaluate(g, d, round_seed(cfg, k), baseline=uniform["metrics"])
        history.append({"round": k, "reward": result["reward"], "g_macs_fraction": result["metrics"]["g_macs_fraction"]})
        print(f"  random round {k}: reward {result['reward']}")
        if result["reward"] is not None and not result["diverged"] and result["reward"] > best["reward"]:
            best = {"round": k, "reward": result["reward"], "g_ratios": g, "d_ratios": d}
    return {"g_ratios": best["g_ratios"], "d_ratios": best["d_ratios"],
            "search": {"best_round": best["round"], "best_reward": best["reward"], "history": history}}


def agent_search(cfg: RunConfig, run_dir: Path, g_alone: bool) -> dict[str, Any]:
    """``run_search`` (resumed when its run directory exists); the best pair and the search summary."""
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        factory = WholeDiscriminatorEvaluator if g_alone else None
        summary = run_search(cfg, run_dir, resume=(run_dir / "run.json").is_file(), progress=True,
                             evaluator_factory=factory)
    g, d = summary["best_g_ratios"], summary["best_d_ratios"]
    if g_alone:
        d = [1.0] * len(d)
    return {"g_ratios": g, "d_ratios": d, "search": {
        "run_dir": str(run_dir), "rounds": summary["rounds"], "best_round": summary["best_round"],
        "best_reward": summary["best_reward"], "uniform_reward": summary["uniform_reward"],
        "wall_s": summary["times"]["wall_s"]}}


def find_finalists(make_cfg: Callable[[Sequence[str]], RunConfig], budget: float, methods: Sequence[str],
                   work: Path, tp_steps: int) -> dict[str, Any]:
    """The finalist of every method for one (budget, seed); cached in ``work/finalists.json``.

    :param make_cfg: the (budget, seed) run config with extra overrides (a search's).
    """
    cfg = make_cfg([])
    path = work / "finalists.json"
    found: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    static = [m for m in methods if m in ("uniform", "global_l1", "inner", "random") and m not in found]
    if static:
        ev = CandidateEvaluator(cfg, work / "random_run")
        ug, ud = ev.uniform_ratios()
        for method in static:
            t0 = time.time()
            print(f"[quality] budget {budget} seed {cfg.search.seed}: {method}")
            if method == "uniform":
                entry: dict[str, Any] = {"g_ratios": ug, "d_ratios": ud}
            elif method == "global_l1":
                g, info = global_l1_ratios(ev.teacher_g, ev.g_space, budget, tp_steps)
                entry = {"g_ratios": g, "d_ratios": ud, "info": info}
            elif method == "inner":
                g, info = inner_layer_ratios(ev.g_space, budget)
                entry = {"g_ratios": g, "d_ratios": ud, "info": info}
            else:
                entry = random_search(ev, cfg, budget)
            entry["find_s"] = time.time() - t0
            found[method] = entry
            atomic_write_json(path, found)
        del ev
        gc.collect()
    for method in (m for m in methods if m in SEARCH_OVERRIDES and m not in found):
        print(f"[quality] budget {budget} seed {cfg.search.seed}: {method} search")
        t0 = time.time()
        search = agent_search(make_cfg(SEARCH_OVERRIDES[method]), work / f"search_{method}", method == "g_alone")
        found[method] = {**search, "find_s": time.time() - t0}
        atomic_write_json(path, found)
    return found


# --------------------------------------------------------------------------- test split
class TestSplit:
    """Measures a generator on the test split with the final evaluator's teacher and feature map.

    :param ev: the final CandidateEvaluator (teacher G/D, phi, device, scorer label).
    :param cfg: its config.
    :param cache_dir: real-statistics cache of the test split.
    """

    def __init__(self, ev: CandidateEvaluator, cfg: RunConfig, cache_dir: Path, latency_repeats: int) -> None:
        self.ev, self.cfg, self.latency_repeats = ev, cfg, latency_repeats
        test = make_dataset(cfg.data, "test", train=False)
        items = [test[i] for i in range(len(test))]
        self.a = torch.stack([it["A"] for it in items]).to(ev.device)
        self.b = torch.stack([it["B"] for it in items]).to(ev.device)
        n_fd = min(len(items), cfg.reward.fid.max_images)
        self.scorer = FidScorer(
            cfg.reward.fid, cache_dir, ev.device,
            teacher_features=lambda y: teacher_d_features(ev.teacher_d, self.a[: len(y)], y),
            teacher_key=f"{ev.teacher_sha['D']}:test:{n_fd}",
        )
        self.metric = self.scorer.metric_name

    @torch.no_grad()
    def measure(self, net_g: nn.Module, seed: int) -> dict[str, Any]:
        """Test FID (or fallback), L_kde, L1, MACs (both conventions), params, CPU latency."""
        net_g = net_g.to(self.ev.device).eval()
        bs = self.cfg.finetune.batch_size
        fake = torch.cat([net_g(self.a[i : i + bs]) for i in range(0, len(self.a), bs)])
        shape = self.ev.g_shape
        out: dict[str, Any] = {
            self.metric: self.scorer.score(fake, self.b, "test_split"),
            "l_kde": kde_loss(net_g, self.ev.teacher_g, self.ev.phi, self.a[: self.cfg.reward.kde.centres],
                              self.cfg, seed).item(),
            "l1": (fake - self.b).abs().mean().item(),
            "test_images": len(self.a),
            "macs": macs(net_g, shape), "macs_published": macs_published(net_g, shape), "params": params(net_g),
        }
        out["macs_fraction"] = out["macs"] / self.ev.g_space.teacher_macs
        out["latency_cpu_ms"] = 1e3 * measure_latency(net_g, shape, "cpu", repeats=self.latency_repeats)["median_s"]
        if self.ev.device.type == "cuda":
            out["latency_cuda_ms"] = 1e3 * measure_latency(net_g, shape, self.ev.device, repeats=self.latency_repeats)["median_s"]
        return out


def load_saved_generator(folder: Path) -> nn.Module:
    """The fine-tuned generator a CandidateEvaluator saved in ``folder`` (spec + state dict)."""
    spec = SubnetSpec.from_json((folder / SPEC_FILES["generator"]).read_text())
    net = build_from_spec(spec)
    weights = folder / NETWORK_FILES["generator"]
    load_state_dict_strict(net, read_state_dict(weights), str(weights))
    return net.eval()


def finalise(cfg: RunConfig, finalists: dict[str, Any], methods: Sequence[str], work: Path,
             latency_repeats: int, teacher_box: dict[str, Any]) -> dict[str, Any]:
    """Final fine-tuning + test-split metrics of every finalist; cached per method in ``work``."""
    results = {m: json.loads((work / f"{m}.json").read_text()) for m in methods if (work / f"{m}.json").is_file()}
    todo = [m for m in methods if m not in results]
    if not todo and teacher_box:
        return results
    ev = CandidateEvaluator(cfg, work / "evaluator")
    split = TestSplit(ev, cfg, work / "test_fid_stats", latency_repeats)
    if not teacher_box:
        teacher_box.update(split.measure(copy.deepcopy(ev.teacher_g), cfg.search.seed), metric=split.metric)
    seed = cfg.search.seed
    baseline = None
    if "uniform" in results:
        baseline = results["uniform"]["final"]["metrics"]
    elif todo:  # the uniform finalist is the reward baseline of the others
        ug, ud = finalists["uniform"]["g_ratios"], finalists["uniform"]["d_ratios"]
        baseline = ev.evaluate(ug, ud, seed, baseline=None)["metrics"]
    for method in sorted(todo, key=lambda m: m != "uniform"):
        print(f"[quality] final fine-tuning ({cfg.finetune.steps} steps) of {method}, seed {seed}")
        f = finalists[method]
        folder = work / "pairs" / method
        result = ev.evaluate(f["g_ratios"], f["d_ratios"], seed, baseline=None if method == "uniform" else baseline,
                             save_dir=folder)
        test = None if result["diverged"] else split.measure(load_saved_generator(folder), seed)
        results[method] = {"final": result, "test": test, "metric": split.metric}
        atomic_write_json(work / f"{method}.json", results[method])
    return results


# --------------------------------------------------------------------------- main
def check_work(work: Path, stamp: dict[str, Any]) -> None:
    """Refuse to reuse a work folder made with another config (its cached finalists would be stale)."""
    path = work / "stamp.json"
    if path.is_file() and json.loads(path.read_text()) != stamp:
        raise SystemExit(f"{work} holds results of another config or --tp-steps; "
                         "pass another --work or delete that folder")
    atomic_write_json(path, stamp)


def summarise(runs: list[dict[str, Any]], budgets: list[float], methods: Sequence[str], metric: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mean/std over seeds per (budget, method) and the winner per budget (lowest mean test metric)."""
    keys = [metric, "l_kde", "l1", "macs_fraction", "macs", "macs_published", "params", "latency_cpu_ms"]
    rows, winners = [], {}
    for budget in budgets:
        for method in methods:
            mine = [r for r in runs if r["budget"] == budget and r["method"] == method]
            tests = [r["test"] or {} for r in mine]
            row: dict[str, Any] = {"budget": budget, "method": method, "seeds": [r["seed"] for r in mine],
                                   "diverged": sum(1 for r in mine if r["test"] is None)}
            for key in keys:
                row[key] = mean_std([t.get(key) for t in tests])
            row["final_reward"] = mean_std([r["final"]["reward"] for r in mine])
            row["search_best_reward"] = mean_std([(r["search"] or {}).get("best_reward") for r in mine])
            rows.append(row)
        scored = [r for r in rows if r["budget"] == budget and r[metric][0] is not None]
        if scored:
            best = min(scored, key=lambda r: r[metric][0])
            winners[str(budget)] = {"method": best["method"], "decided_by": f"lowest mean test {metric}",
                                    "value": best[metric][0]}
    return rows, winners


def main() -> None:
    args = parse_args()
    t_start = time.time()
    extra = [f"search.rounds={args.rounds}"] if args.rounds else []
    base = load_cfg(args.config, args.overrides, extra)
    budgets = parse_list(args.budgets) if args.budgets else [base.pruning.budget.generator]
    seeds = parse_list(args.seeds, int)
    methods = parse_list(args.methods, str)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)} (allowed: {', '.join(METHODS)})")
    if "uniform" not in methods:
        methods.insert(0, "uniform")  # the final reward baseline
    final_steps = args.final_steps or base.finetune.final_steps
    if args.quick:
        if not args.rounds:
            extra = ["search.rounds=2"]
        seeds, budgets, final_steps, args.latency_repeats = seeds[:1], budgets[:1], base.finetune.steps, 2

    runs: list[dict[str, Any]] = []
    teacher: dict[str, Any] = {}
    for budget in budgets:
        for seed in seeds:
            sets = [*extra, f"pruning.budget.generator={budget}", f"search.seed={seed}"]
            work = args.work / f"budget_{budget:g}" / f"seed_{seed}"
            make_cfg = lambda more: load_cfg(args.config, args.overrides, [*sets, *more])  # noqa: E731
            check_work(work, {"config_digest": make_cfg([]).digest(), "tp_steps": args.tp_steps})
            finalists = find_finalists(make_cfg, budget, methods, work, args.tp_steps)
            final_cfg = load_cfg(args.config, args.overrides, [*sets, f"finetune.steps={final_steps}"])
            results = finalise(final_cfg, finalists, methods, work / f"final_{final_steps}", args.latency_repeats, teacher)
            for method in methods:
                f, r = finalists[method], results[method]
                runs.append({"budget": budget, "seed": seed, "method": method,
                             "g_ratios": f["g_ratios"], "d_ratios": f["d_ratios"],
                             "g_channels": r["final"]["g_channels"], "d_channels": r["final"]["d_channels"],
                             "search": f.get("search"), "info": f.get("info"), "find_s": f.get("find_s"),
                             "final": {k: r["final"][k] for k in ("reward", "reward_terms", "diverged", "metrics", "times")},
                             "test": r["test"]})

    metric = teacher.get("metric", "fid")
    rows, winners = summarise(runs, budgets, methods, metric)
    table = Table(title=f"Quality at equal G budget: test split after {final_steps} final fine-tuning steps "
                        f"(mean ± std over seeds {seeds}; winner = lowest mean test {metric})")
    for col in ("budget", "method", f"test {metric}", "L_kde", "L1", "final reward", "G MACs frac", "GMACs",
                "GMACs (pub.)", "params (M)", "CPU ms", "search best reward"):
        table.add_column(col, justify="left" if col == "method" else "right")
    table.add_row("teacher", "-", fmt(teacher.get(metric)), fmt(teacher.get("l_kde")), fmt(teacher.get("l1")), "-", "1",
                  fmt(teacher.get("macs", 0) / 1e9), fmt(teacher.get("macs_published", 0) / 1e9),
                  fmt(teacher.get("params", 0) / 1e6), fmt(teacher.get("latency_cpu_ms")), "-")
    for row in rows:
        win = winners.get(str(row["budget"]), {}).get("method") == row["method"]
        g = lambda key, scale=1.0: fmt_pm(*(v / scale if v is not None else None for v in row[key]))  # noqa: E731
        table.add_row(fmt(row["budget"], 3), ("★ " if win else "") + row["method"] + (f" ({row['diverged']} div.)" if row["diverged"] else ""),
                      g(metric), g("l_kde"), g("l1"), g("final_reward"), g("macs_fraction"), g("macs", 1e9),
                      g("macs_published", 1e9), g("params", 1e6), g("latency_cpu_ms"), g("search_best_reward"),
                      style="bold" if win else None)
    print_table(table)
    write_results(args.out, {
        "benchmark": "quality",
        "config": args.config,
        "overrides": args.overrides,
        "args": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "out")},
        "budgets": budgets, "seeds": seeds, "methods": methods, "final_steps": final_steps,
        "fd_metric": metric,
        "machine": machine_info(),
        "description": __doc__,
        "teacher": teacher,
        "summary": rows,
        "winners": winners,
        "runs": runs,
        "wall_s": time.time() - t_start,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
