"""What learning during evaluation costs the search: both learning schedules on a known best allocation.

``agents.learn_during_evaluation`` takes a round's gradient steps while the next round is evaluated,
off the round's critical path (``benchmarks/search_scale.py`` measures the time it saves), but the next
round's proposals then come from a policy one round behind. This benchmark measures that price in
search quality, in seconds and without fine-tuning: the G agent (:class:`agents.pruning_agent.AgentCore`,
the real SB3 learner and envs, N envs = candidates a round, with an in-process link instead of the
Coordinator) searches the generator's space of the config against :class:`KnownBestReward`, the reward
of ``tests/test_agents.py::test_learns_a_known_best_allocation``: minus the mean ``|log2(r / r*)|``
distance to a known best allocation ``r*``, plus Gaussian noise.

For each ``NxE`` of ``--grid`` (N candidates a round, E evaluations, so E / N rounds) and each seed,
the agent searches under both schedules with the same seeds. Reported, as a fraction of the uniform
candidate's distance to ``r*`` (lower is better): the best allocation evaluated (what a search returns
before its re-evaluation), the mean of the last quarter of the evaluations, and the deterministic
policy's allocation after the search; and the paired difference (during evaluation - sequential) with a
bootstrap 95% interval and the seeds where learning during evaluation did worse.

    python -m benchmarks.learning_schedule [CONFIG] [--grid 2x80,4x80,8x160,4x240,8x240] [--seeds 12]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/learning_schedule.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

import numpy as np
from rich.table import Table

from benchmarks._shared import RESULTS_DIR, InProcessLink, base_parser, fmt, load_cfg, print_table, write_results
from benchmarks.quality import bootstrap_ci
from collabprune.config import RunConfig
from envs.space import RoleSpace

#: schedule name -> ``agents.learn_during_evaluation``
SCHEDULES = {"sequential": False, "during-evaluation": True}
MEASURES = ("best", "last_quarter", "policy")


@dataclass
class KnownBestReward:
    """A synthetic reward whose best allocation is known (no fine-tuning).

    ``reward(r) = -mean_g |log2(r_g / r*_g)| + N(0, noise_std^2)``, where ``r*`` keeps the
    high-resolution (narrow) groups wide: ``uniform * (C_max / C_g) ** 0.75`` projected onto the budget
    (C_g: channels of group g). Every call draws new noise from a generator seeded by ``seed``.

    :param space: the role's channel space (its budget and uniform candidate).
    :param seed: seeds the noise.
    :param noise_std: standard deviation of the noise (reward units).
    """

    space: RoleSpace
    seed: int
    noise_std: float = 0.05
    target: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        channels = np.array([g.channels for g in self.space.groups], dtype=float)
        self.target = np.array(self.space.project(list(self.space.uniform * (channels.max() / channels) ** 0.75)))
        self._noise = np.random.default_rng(self.seed)

    def distance(self, ratios: list[float]) -> float:
        """Mean absolute log2 distance of keep ratios ``ratios`` (one per group) to the best allocation."""
        return float(np.mean(np.abs(np.log2(np.asarray(ratios) / self.target))))

    def __call__(self, ratios: list[float]) -> float:
        return -self.distance(ratios) + float(self._noise.normal(0.0, self.noise_std))


def search(cfg: RunConfig, slots: int, seed: int) -> dict[str, float]:
    """One G-agent search of ``cfg.search.rounds`` rounds of ``slots`` candidates against
    :class:`KnownBestReward`; distances as fractions of the uniform candidate's (module docstring)."""
    from agents.pruning_agent import AgentCore
    from collabprune.runs import RunDir

    space = RoleSpace.from_config("generator", cfg)
    reward = KnownBestReward(space, seed)
    evaluated: list[float] = []

    def scored(ratios: list[float]) -> float:
        evaluated.append(reward.distance(ratios))
        return reward(ratios)

    with tempfile.TemporaryDirectory() as tmp:
        RunDir.create(Path(tmp), cfg, slots=slots)
        agent = AgentCore("generator", cfg.to_dict(), tmp, InProcessLink(scored, slots), slots=slots)
        agent.run_rounds()
        policy = agent.deterministic_ratios()
    uniform = reward.distance(space.uniform_candidate())
    return {"best": min(evaluated) / uniform, "last_quarter": statistics.fmean(evaluated[-len(evaluated) // 4:]) / uniform,
            "policy": reward.distance(policy) / uniform}


def compare(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per measure: each schedule's mean and the paired difference during - sequential (positive: learning
    during evaluation ended farther from the best allocation) with its bootstrap 95% interval."""
    out: dict[str, Any] = {}
    for m in MEASURES:
        seq = [r[m] for r in runs["sequential"]]
        during = [r[m] for r in runs["during-evaluation"]]
        diff = [d - s for d, s in zip(during, seq)]
        lo, hi = bootstrap_ci(diff)
        out[m] = {"sequential": statistics.fmean(seq), "during-evaluation": statistics.fmean(during),
                  "difference": statistics.fmean(diff), "ci95": [lo, hi], "during_worse": sum(d > 0 for d in diff),
                  "seeds": len(diff)}
    return out


def main() -> None:
    parser = base_parser("learning_schedule", __doc__.splitlines()[0])
    parser.add_argument("--grid", default="2x80,4x80,8x160,4x240,8x240",
                        help="comma-separated NxE: N candidates a round, E evaluations per search")
    parser.add_argument("--seeds", type=int, default=12, help="search seeds (0..N-1)")
    args = parser.parse_args()
    t0 = time.time()
    rows = []
    for cell in [c for c in args.grid.split(",") if c]:
        try:
            slots, evaluations = (int(x) for x in cell.lower().split("x"))
        except ValueError:
            parser.error(f"--grid: {cell!r} is not NxE (candidates a round x evaluations), e.g. 8x240")
        if slots < 1 or evaluations < slots or evaluations % slots:
            parser.error(f"--grid: {cell!r}: the evaluations must be a positive multiple of the candidates a round")
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in SCHEDULES}
        for schedule, during in SCHEDULES.items():
            for seed in range(args.seeds):
                cfg = load_cfg(args.config, args.overrides, [
                    f"search.rounds={evaluations // slots}", f"search.seed={seed}", "search.checkpoint_every=100000",
                    f"agents.learn_during_evaluation={str(during).lower()}", "agents.steps_before_proposal=0"])
                runs[schedule].append(search(cfg, slots, seed))
        rows.append({"slots": slots, "evaluations": evaluations, "rounds": evaluations // slots,
                     "compare": compare(runs), "runs": runs})
        print(f"[learning_schedule] {cell}: best {fmt(rows[-1]['compare']['best']['difference'], 3)}", flush=True)

    table = Table(title=f"Learning during evaluation vs sequential learning on a known best allocation ({args.seeds} "
                        "seeds; distance as a fraction of the uniform candidate's, lower is better; paired "
                        "difference during - sequential, 95% CI, seeds where during is worse)")
    for col in ("candidates/round", "evaluations", "rounds", *(f"{m}: seq / during" for m in MEASURES),
                *(f"{m}: difference" for m in MEASURES)):
        table.add_column(col, justify="right")
    for r in rows:
        c = r["compare"]
        table.add_row(str(r["slots"]), str(r["evaluations"]), str(r["rounds"]),
                      *(f"{fmt(c[m]['sequential'], 3)} / {fmt(c[m]['during-evaluation'], 3)}" for m in MEASURES),
                      *(f"{c[m]['difference']:+.3f} [{c[m]['ci95'][0]:+.3f}, {c[m]['ci95'][1]:+.3f}] "
                        f"{c[m]['during_worse']}/{c[m]['seeds']}" for m in MEASURES))
    print_table(table)
    out = args.out or RESULTS_DIR / "learning_schedule.json"
    write_results(out, {"benchmark": "learning_schedule", "config": str(args.config), "overrides": args.overrides,
                        "args": {"grid": args.grid, "seeds": args.seeds}, "wall_s": time.time() - t0, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
