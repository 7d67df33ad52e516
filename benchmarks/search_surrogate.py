"""Search methods on a surrogate of the in-search reward: agent settings in seconds, not hours.

``benchmarks/quality.py`` is the referee, but one seed of one method costs about ten minutes of
fine-tuning on this CPU, far too slow to tune the agents' learning. Here a Gaussian process
(scikit-learn, ARD RBF kernel + white noise, ``normalize_y``) is fitted to the rewards that real
searches logged (``benchmarks/results/quality_logs[_<tag>]/budget_<b>_*.jsonl``: the G keep ratios of every
evaluated candidate, as ``log2(ratio / uniform ratio)``, -> its in-search reward). Each method then
searches the generator's space with the surrogate as its reward: the GP mean at the executed ratios
plus Gaussian noise of the fitted white-noise std (the reward's own evaluation noise). Every method
gets ``--rounds`` evaluations, then a re-evaluation after the manner of :mod:`collabprune.selection`
(not that module itself, which needs logged metrics): the top 3 by noisy reward are each scored by
the mean of their search draw and two fresh noisy draws, and the best mean is selected (unlike the
real selection, the uniform candidate is not a contender). A method's score is the GP mean at the
candidate it selects (higher is better).

Methods: ``random`` and ``tpe`` as in ``benchmarks/quality.py`` (actions in [-1, 1] per group,
projected onto the budget), and the G agent (:class:`agents.pruning_agent.AgentCore`, the real SB3
learner and env, with an in-process link instead of the Coordinator) under the config's agent
settings and under each ``--variant NAME=key=value;key=value``. Only the generator searches: the
discriminator's ratios barely change the fitted reward (cross-validated R^2 0.976 from G alone,
0.978 with D). A surrogate is a guide, not a result: every claim about the search is checked with
``benchmarks/quality.py``. Its reach is limited: fitted to the 780 logs at 25% it picked
self-imitation, which the real task confirmed (README "How the agents learn"); fitted to the 1800
logs of 20 seeds it no longer separates TPE from random search (+0.003 [-0.030, +0.040], README
"Quality"), which the real task does, so it can no longer rank settings closer than that.

    python -m benchmarks.search_surrogate [CONFIG] [--budget 0.25] [--tag T] [--seeds 10] [--rounds 60]
        [--variant "before=agents.self_imitation=0;agents.learning_rate=1e-3"]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

if __name__ == "__main__" and __package__ in (None, ""):
    from _shared import script_mode_path_fix  # type: ignore[import-not-found]

    script_mode_path_fix()

import numpy as np
from rich.table import Table

from benchmarks._shared import (InProcessLink, base_parser, fmt, fmt_pm, input_error, load_cfg, machine_info, print_table,
                               write_results)
from benchmarks.quality import bootstrap_ci, logs_dir
from collabprune.config import RunConfig
from envs.space import RoleSpace

REEVAL_TOP_K = 3
REEVAL_DRAWS = 2


class Surrogate:
    """GP regression of the in-search reward on a G keep-ratio vector (fitted to logged searches).

    :param logs: per-evaluation logs (JSON lines with ``kind``, ``reward``, ``g_ratios``).
    :param uniform: the G uniform candidate's ratios (the features are ``log2(ratio / uniform)``).
    :raises ValueError: fewer than 20 logged search evaluations.
    """

    def __init__(self, logs: Sequence[Path], uniform: Sequence[float]) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        x, y = [], []
        for path in logs:
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("kind") == "search" and rec.get("reward") is not None and rec.get("g_ratios"):
                    x.append(rec["g_ratios"])
                    y.append(rec["reward"])
        if len(y) < 20:
            raise ValueError(f"{len(y)} logged search evaluations in {[str(p) for p in logs]}: need >= 20 "
                             "(run benchmarks/quality.py first)")
        self.uniform = np.asarray(uniform, dtype=float)
        self.n = len(y)
        kernel = ConstantKernel(1.0) * RBF(np.ones(len(uniform))) + WhiteKernel(0.05)
        self.gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
        with warnings.catch_warnings():  # length scales of groups that do not matter hit their bound
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp.fit(self._features(np.asarray(x, dtype=float)), np.asarray(y, dtype=float))
        self.noise_std = float(np.sqrt(self.gp.kernel_.k2.noise_level) * self.gp._y_train_std)

    def _features(self, ratios: np.ndarray) -> np.ndarray:
        return np.log2(np.atleast_2d(ratios) / self.uniform)

    def mean(self, ratios: Sequence[float]) -> float:
        """The surrogate's expected reward of a G ratio vector."""
        return float(self.gp.predict(self._features(np.asarray(ratios, dtype=float)))[0])


def search(method: str, cfg: RunConfig, space: RoleSpace, surrogate: Surrogate, seed: int) -> dict[str, float]:
    """One search of ``cfg.search.rounds`` evaluations; the surrogate mean of what it selects.

    :returns: ``selected`` (GP mean at the re-evaluated winner), ``best`` (best GP mean evaluated),
        ``first20`` / ``last20`` (mean GP value of the first / last 20 evaluations).
    """
    noise = np.random.default_rng([seed, 77])
    history: list[tuple[list[float], float]] = []

    def reward(ratios: list[float]) -> float:
        value = surrogate.mean(ratios) + float(noise.normal(0.0, surrogate.noise_std))
        history.append((ratios, value))
        return value

    def to_ratios(actions: Sequence[float]) -> list[float]:
        return space.project([space.action_to_ratio(a) for a in actions])

    rounds = cfg.search.rounds
    if method == "random":
        rng = np.random.default_rng([seed, 4242])
        for _ in range(rounds):
            reward(to_ratios(rng.uniform(-1.0, 1.0, space.n_groups)))
    elif method == "tpe":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, cfg.agents.warmup_episodes))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for _ in range(rounds):
            trial = study.ask()
            study.tell(trial, reward(to_ratios([trial.suggest_float(f"g{i}", -1.0, 1.0) for i in range(space.n_groups)])))
    else:
        from agents.pruning_agent import AgentCore
        from collabprune.runs import RunDir

        with tempfile.TemporaryDirectory() as tmp:
            RunDir.create(Path(tmp), cfg)
            AgentCore("generator", cfg.to_dict(), tmp, InProcessLink(reward)).run_rounds()
    top = sorted(range(len(history)), key=lambda i: history[i][1])[-REEVAL_TOP_K:]
    scores = [statistics.fmean([history[i][1]] + [surrogate.mean(history[i][0]) + float(noise.normal(0.0, surrogate.noise_std))
                                                   for _ in range(REEVAL_DRAWS)]) for i in top]
    chosen = history[top[int(np.argmax(scores))]][0]
    values = [surrogate.mean(r) for r, _ in history]
    return {"selected": surrogate.mean(chosen), "best": max(values),
            "first20": statistics.fmean(values[:20]), "last20": statistics.fmean(values[-20:])}


def main() -> None:
    parser = base_parser("search_surrogate", __doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.25, help="G MACs budget whose logs are fitted")
    parser.add_argument("--seeds", type=int, default=10, help="search seeds per method (0..N-1)")
    parser.add_argument("--rounds", type=int, default=60, help="evaluations per search")
    parser.add_argument("--warmup", type=int, default=8, help="agents.warmup_episodes (and TPE's startup trials)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=k=v;k=v",
                        help="an agent variant: config overrides separated by ';' (repeatable)")
    parser.add_argument("--methods", default="random,tpe,agent", help="comma-separated: random, tpe, agent")
    parser.add_argument("--tag", default="", help="fit the logs of `benchmarks.quality --tag T` (quality_logs_T/; "
                        "default quality_logs/)")
    args = parser.parse_args()
    t0 = time.time()
    common = [f"pruning.budget.generator={args.budget}", f"search.rounds={args.rounds}",
              "search.num_evaluators=1", f"agents.warmup_episodes={args.warmup}"]
    base = load_cfg(args.config, args.overrides, common)
    space = RoleSpace.from_config("generator", base)
    folder = logs_dir(args.tag)
    logs = sorted(folder.glob(f"budget_{args.budget:g}_*.jsonl"))
    if not logs:
        input_error("search_surrogate", f"--budget {args.budget:g}: no per-evaluation logs budget_{args.budget:g}_*.jsonl "
                                        f"in {folder} (run benchmarks.quality with that budget and --tag first)")
    surrogate = Surrogate(logs, space.uniform_candidate())

    runs: dict[str, list[dict[str, float]]] = {}
    sets: dict[str, list[str]] = {m: [] for m in args.methods.split(",") if m}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        sets[name] = [kv for kv in rest.split(";") if kv]
    for name, more in sets.items():
        method = name if name in ("random", "tpe") else "agent"
        runs[name] = []
        for seed in range(args.seeds):
            cfg = load_cfg(args.config, args.overrides, [*common, f"search.seed={seed}", *more])
            runs[name].append(search(method, cfg, space, surrogate, seed))
        print(f"[surrogate] {name}: {fmt(statistics.fmean(r['selected'] for r in runs[name]), 3)}", flush=True)

    table = Table(title=f"Searches on a GP surrogate of the in-search reward ({surrogate.n} logged evaluations at "
                        f"{args.budget:g} of G MACs, noise std {surrogate.noise_std:.3f}); {args.rounds} evaluations, "
                        f"{args.seeds} seeds; score = surrogate mean of the selected candidate (higher is better)")
    for col in ("method", "selected", "best evaluated", "first 20", "last 20", "vs random (paired)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    summary = []
    for name, rs in runs.items():
        row: dict[str, Any] = {"method": name, "overrides": sets[name]}
        for key in ("selected", "best", "first20", "last20"):
            vals = [r[key] for r in rs]
            row[key] = [statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0]
        if name != "random" and "random" in runs:
            diffs = [a["selected"] - b["selected"] for a, b in zip(rs, runs["random"])]
            row["vs_random"] = {"mean": statistics.fmean(diffs), "ci95": list(bootstrap_ci(diffs)),
                                "wins": sum(d > 0 for d in diffs), "n": len(diffs)}
        summary.append(row)
        c = row.get("vs_random")
        table.add_row(name, fmt_pm(*row["selected"], 3), fmt_pm(*row["best"], 3), fmt_pm(*row["first20"], 3),
                      fmt_pm(*row["last20"], 3),
                      f"{c['mean']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] {c['wins']}/{c['n']}" if c else "-")
    print_table(table)
    write_results(args.out, {
        "benchmark": "search_surrogate", "config": args.config, "overrides": args.overrides, "budget": args.budget,
        "rounds": args.rounds, "seeds": args.seeds, "warmup": args.warmup, "logs": [str(p.name) for p in logs],
        "surrogate": {"n": surrogate.n, "noise_std": surrogate.noise_std, "kernel": str(surrogate.gp.kernel_)},
        "machine": machine_info(), "description": __doc__, "summary": summary, "runs": runs, "wall_s": time.time() - t0,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
