"""Paired per-seed differences between two methods whose runs lie in different ``benchmarks.quality`` files.

``benchmarks.quality`` pairs the methods of one invocation (one ``--work`` cache). When the runs of a
comparison were tabulated into several result files (seeds added later, or one method under other
settings, such as the D agent's pull-only reward against the default agents, both named ``collab``),
this pairs them the same way: per search seed, each side's finalist score is the mean of the metric over
its final seeds (:func:`benchmarks.quality.heldout_mean`); the difference of A against B is signed so that
positive means A is better; the bootstrap 95% interval and the seeds won come from
:func:`benchmarks.quality.paired`. Only seeds present on both sides count. A side may list several files:
a (method, seed) found in two of them must have the same score in both (a bit-identical rerun), else it is
an error. It reads result files and runs nothing; pair only files measured on one CPU model (README,
"Quality at equal MACs").

    python -m benchmarks.pair_results A.json[,A2.json]:METHOD B.json[,B2.json]:METHOD --budget 0.25
                                      [--metric l1] [--out benchmarks/results/pair_results.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/pair_results.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

from rich.table import Table

from benchmarks._shared import (fmt_pm, input_error, parse_list, print_table, read_quality_runs, results_parser,
                                same_budget, write_results)
from benchmarks.quality import heldout_mean, paired
from collabprune.heldout import HELDOUT_METRICS, PRIMARY_METRIC

NAME = "pair_results"


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a method's per-seed scores gathered from one or more result files.

    :param files: the result files, as given.
    :param method: the method name in their ``runs``.
    :param scores: search seed -> the finalist's score (mean of the metric over its final seeds).
    """

    files: list[str]
    method: str
    scores: dict[int, float]


def read_side(spec: str, budget: float, metric: str) -> Side:
    """The scores of ``FILE[,FILE...]:METHOD`` at ``budget`` on ``metric``.

    :raises OSError: a file cannot be read.
    :raises ValueError: the spec has no ``:METHOD``; a file is not a quality result (or a run lacks
        ``budget``/``method``/``seed``/``heldout``); a seed's score differs between two files; no run of the
        method at the budget has the metric.
    """
    names, sep, method = spec.rpartition(":")
    files = parse_list(names, str) if sep else []
    if not files or not method:
        raise ValueError(f"{spec!r}: expected FILE[,FILE...]:METHOD")
    scores: dict[int, float] = {}
    found_in: dict[int, str] = {}
    for name in files:
        try:
            runs = read_quality_runs(Path(name))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None
        for i, run in enumerate(runs):
            try:
                if str(run["method"]) != method or not same_budget(run["budget"], budget):
                    continue
                seed, score = int(run["seed"]), heldout_mean(run["heldout"], metric)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{name}: runs[{i}] is not a quality run ({type(exc).__name__}: {exc})") from None
            if score is None:
                continue
            if seed in scores and scores[seed] != score:
                raise ValueError(f"{method} seed {seed} at budget {budget:g} scores {scores[seed]!r} in "
                                 f"{found_in[seed]} but {score!r} in {name}: not the same run")
            scores[seed] = score
            found_in.setdefault(seed, name)
    if not scores:
        raise ValueError(f"{spec!r}: no {method} run at budget {budget:g} with a {metric} result")
    return Side(files, method, scores)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = results_parser(NAME, __doc__.split("\n")[0])
    parser.add_argument("a", help="FILE[,FILE...]:METHOD, the side whose improvement is reported")
    parser.add_argument("b", help="FILE[,FILE...]:METHOD, the reference")
    parser.add_argument("--metric", default=PRIMARY_METRIC, choices=HELDOUT_METRICS,
                        help=f"held-out metric (default {PRIMARY_METRIC})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Pair the two sides, print the table, write ``--out``; bad input exits 2 with one line, nothing written."""
    args = parse_args(argv)
    try:
        a, b = (read_side(spec, args.budget, args.metric) for spec in (args.a, args.b))
    except ValueError as exc:
        input_error(NAME, str(exc))
    seeds = sorted(set(a.scores) & set(b.scores))
    if not seeds:
        input_error(NAME, f"no search seed on both sides (A: {sorted(a.scores)}, B: {sorted(b.scores)})")
    comparison = paired({s: {"a": a.scores[s], "b": b.scores[s]} for s in seeds}, "a", "b", args.metric)
    assert comparison is not None

    def mean_std(side: Side) -> tuple[float, float]:
        values = [side.scores[s] for s in seeds]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    table = Table(title=f"Paired test-{args.metric} difference at budget {args.budget:g} over search seeds {seeds} "
                        "(positive = A better), bootstrap 95% CI and seeds won")
    for col in ("A method", "B method", f"A {args.metric}", f"B {args.metric}", "A against B"):
        table.add_column(col, justify="right")
    table.add_row(a.method, b.method, fmt_pm(*mean_std(a)), fmt_pm(*mean_std(b)),
                  f"{comparison['mean']:+.4f} [{comparison['ci95'][0]:+.4f}, {comparison['ci95'][1]:+.4f}] "
                  f"{comparison['wins']}/{comparison['n']}")
    print_table(table)
    payload = {"benchmark": NAME, "budget": args.budget, "metric": args.metric, "seeds": seeds,
               "a": {"files": a.files, "method": a.method, "scores": {s: a.scores[s] for s in seeds}},
               "b": {"files": b.files, "method": b.method, "scores": {s: b.scores[s] for s in seeds}},
               "comparison": comparison, "description": __doc__}
    write_results(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
