"""What the searches of a ``benchmarks.quality`` run learned: reward over rounds and the allocations kept.

For each method of a quality result file at one budget, from the per-evaluation logs
(:func:`benchmarks.quality.read_log`) and the finalists recorded in the file:

- **learning:** per search seed, the mean search reward (the team reward of DESIGN.md §4, the one every
  method's log holds) over an early and a late window of rounds; the late minus early difference with
  the bootstrap 95% interval over seeds (:func:`benchmarks.quality.bootstrap_ci`) and the number of
  seeds where it is positive. The early window starts after the agents' warm-up rounds by default.
- **the D agent's last group:** the mean keep ratio of the last prunable D group proposed in each window.
- **allocation kept:** the finalists' G keep ratio per prunable group as a log2 multiplier on the uniform
  finalist's (0 = uniform, +1 = twice as wide), and their D keep ratios, means over seeds.

It reads result files and logs and runs nothing.

    python -m benchmarks.learned RESULTS.json --budget 0.25 [--tag dpo] [--methods collab,random,tpe]
                                 [--early 8:20] [--late 40:60] [--out benchmarks/results/learned.json]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/learned.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

from rich.table import Table

from benchmarks._shared import (input_error, parse_list, print_table, read_quality_runs, results_parser, same_budget,
                                write_results)
from benchmarks.quality import bootstrap_ci, read_log

NAME = "learned"


@dataclass(frozen=True)
class Learned:
    """What one method's searches learned at one budget.

    :param method: the method name in the result file's ``runs``.
    :param seeds: the search seeds with a log (the learning and D columns) .
    :param early: mean search reward over the early window, mean over seeds (reward units, higher is better).
    :param late: the same over the late window.
    :param gain: late minus early, mean over seeds.
    :param gain_ci95: bootstrap 95% interval of ``gain`` over seeds.
    :param seeds_improved: seeds whose late mean beats their early mean.
    :param d_last_early: mean keep ratio of the last prunable D group proposed in the early window.
    :param d_last_late: the same in the late window.
    :param finalists: seeds with a finalist in the result file (the two allocation columns).
    :param g_log2_multiplier: per G group (network order), mean over finalists of log2(r / r_uniform).
    :param d_ratios: per D group, mean over finalists of the keep ratio.
    """

    method: str
    seeds: list[int]
    early: float | None
    late: float | None
    gain: float | None
    gain_ci95: tuple[float, float] | None
    seeds_improved: int
    d_last_early: float | None
    d_last_late: float | None
    finalists: int
    g_log2_multiplier: list[float]
    d_ratios: list[float]


def parse_window(text: str) -> tuple[int, int]:
    """``"8:20"`` -> rounds 8..19 (start inclusive, end exclusive).

    :raises argparse.ArgumentTypeError: not ``START:END`` with ``0 <= START < END``.
    """
    start, sep, end = text.partition(":")
    try:
        window = int(start), int(end)
    except ValueError:
        window = (-1, -1)
    if not sep or not 0 <= window[0] < window[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected START:END rounds with 0 <= START < END")
    return window


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def learned(runs: list[Any], method: str, budget: float, tag: str, early: tuple[int, int],
            late: tuple[int, int]) -> Learned:
    """:class:`Learned` of ``method`` at ``budget`` from the result file's ``runs`` and the logs of ``tag``.

    :raises ValueError: no uniform finalist at the budget (the allocations' reference), or a finalist's
        ratio vector has another length than the uniform finalist's.
    """
    here = [r for r in runs if same_budget(r.get("budget"), budget)]
    uniform = next((r["finalist"] for r in here if r.get("method") == "uniform"), None)
    if uniform is None:
        raise ValueError(f"no uniform run at budget {budget:g}: it is the allocations' reference")
    mine = sorted((r for r in here if r.get("method") == method), key=lambda r: int(r["seed"]))
    seeds, gains, early_means, late_means, d_early, d_late = [], [], [], [], [], []
    for run in mine:
        rows = read_log(budget, method, int(run["seed"]), tag)
        if rows is None:
            continue
        search = [r for r in rows if r.get("kind") == "search" and r.get("reward") is not None]
        first = [r for r in search if early[0] <= r["round"] < early[1]]
        last = [r for r in search if late[0] <= r["round"] < late[1]]
        if not first or not last:
            continue
        seeds.append(int(run["seed"]))
        early_means.append(statistics.fmean(r["reward"] for r in first))
        late_means.append(statistics.fmean(r["reward"] for r in last))
        gains.append(late_means[-1] - early_means[-1])
        d_early.append(statistics.fmean(r["d_ratios"][-1] for r in first))
        d_late.append(statistics.fmean(r["d_ratios"][-1] for r in last))
    g_ref, d_len = uniform["g_ratios"], len(uniform["d_ratios"])
    finalists = [r["finalist"] for r in mine]
    for f in finalists:
        if len(f["g_ratios"]) != len(g_ref) or len(f["d_ratios"]) != d_len:
            raise ValueError(f"{method}: a finalist has {len(f['g_ratios'])} G / {len(f['d_ratios'])} D ratios, the "
                             f"uniform one {len(g_ref)} / {d_len}")
    g_mult = [statistics.fmean(math.log2(f["g_ratios"][i] / g_ref[i]) for f in finalists) for i in range(len(g_ref))] \
        if finalists else []
    d_keep = [statistics.fmean(f["d_ratios"][i] for f in finalists) for i in range(d_len)] if finalists else []
    return Learned(method=method, seeds=seeds, early=_mean(early_means), late=_mean(late_means), gain=_mean(gains),
                   gain_ci95=bootstrap_ci(gains) if gains else None, seeds_improved=sum(g > 0 for g in gains),
                   d_last_early=_mean(d_early), d_last_late=_mean(d_late), finalists=len(finalists),
                   g_log2_multiplier=g_mult, d_ratios=d_keep)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = results_parser(NAME, __doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="a benchmarks.quality result file")
    parser.add_argument("--tag", default="", help="the quality run's --tag (its logs: quality_logs_<tag>/)")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: every searching method "
                        "in the file)")
    parser.add_argument("--early", type=parse_window, default=(8, 20), help="early rounds START:END (default 8:20, "
                        "after the demo's 8 warm-up rounds)")
    parser.add_argument("--late", type=parse_window, default=(40, 60), help="late rounds START:END (default 40:60)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Summarise each method, print the table, write ``--out``; bad input exits 2 with one line, nothing written."""
    args = parse_args(argv)
    try:
        runs = read_quality_runs(args.results)
    except (OSError, ValueError) as exc:
        input_error(NAME, f"{args.results}: {exc}")
    present = list(dict.fromkeys(str(r.get("method")) for r in runs))
    methods = parse_list(args.methods, str) or [m for m in present if m not in ("uniform", "inner", "global_l1")]
    unknown = [m for m in methods if m not in present]
    if unknown:
        input_error(NAME, f"--methods: {unknown} not in {args.results} (it has {present})")
    try:
        rows = [learned(runs, m, args.budget, args.tag, args.early, args.late) for m in methods]
    except (KeyError, TypeError, ValueError) as exc:
        input_error(NAME, f"{args.results}: {exc}")

    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    table = Table(title=f"What the searches learned at budget {args.budget:g}: search reward in rounds "
                        f"{args.early[0]}-{args.early[1] - 1} and {args.late[0]}-{args.late[1] - 1}, the last D "
                        "group's keep ratio, the finalists' G log2 multipliers on uniform and D keep ratios")
    for col in ("method", "seeds", "early", "late", "late - early [95% CI] improved", "D last", "G log2(r/r_u)",
                "D keep"):
        table.add_column(col, justify="right")
    for r in rows:
        gain = "-" if r.gain is None or r.gain_ci95 is None else (
            f"{r.gain:+.3f} [{r.gain_ci95[0]:+.3f}, {r.gain_ci95[1]:+.3f}] {r.seeds_improved}/{len(r.seeds)}")
        table.add_row(r.method, str(len(r.seeds)), num(r.early), num(r.late), gain,
                      f"{num(r.d_last_early, 2)} -> {num(r.d_last_late, 2)}",
                      " ".join(f"{x:+.1f}" for x in r.g_log2_multiplier), " ".join(f"{x:.2f}" for x in r.d_ratios))
    print_table(table)
    payload = {"benchmark": NAME, "results": str(args.results), "budget": args.budget, "tag": args.tag,
               "early": list(args.early), "late": list(args.late), "methods": [asdict(r) for r in rows],
               "description": __doc__}
    write_results(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
