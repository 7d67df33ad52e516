"""Rich terminal tables of evaluation results (``evaluate`` CLI, demo summary)."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from collabprune.records import EvaluationRecord


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


ROWS: tuple[tuple[str, str, float, str], ...] = (
    # (label, metrics key, scale, format)
    ("G MACs (G)", "g_macs", 1e-9, ".3f"),
    ("G MACs published (G)", "g_macs_published", 1e-9, ".3f"),
    ("G MACs fraction", "g_macs_fraction", 1.0, ".3f"),
    ("G params (M)", "g_params", 1e-6, ".3f"),
    ("D MACs fraction", "d_macs_fraction", 1.0, ".3f"),
    ("D params (M)", "d_params", 1e-6, ".3f"),
    ("L_kde", "l_kde", 1.0, ".4f"),
    ("bal", "bal", 1.0, ".3f"),
    ("rho", "rho", 1.0, ".3f"),
    ("D pull (paired)", "pull", 1.0, ".3f"),
)


def metrics_table(rows: Mapping[str, EvaluationRecord], title: str = "candidates",
                  latency_ms: Mapping[str, float] | None = None) -> Table:
    """A table with one column per named evaluation result and one row per metric.

    :param rows: name -> evaluation record (as returned by
        :meth:`~collabprune.evaluation.CandidateEvaluator.evaluate`).
    :param latency_ms: name -> CPU latency at batch 1 (ms), a row when given.
    """
    first = next(iter(rows.values()))
    fd = first.metrics.fd_metric
    table = Table(title=title)
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    spec = list(ROWS)
    spec.insert(6, (fd, fd, 1.0, ".4g"))
    for label, key, scale, fmt in spec:
        values = [res.metrics.get(key) for res in rows.values()]  # a metric by name (the rows above)
        table.add_row(label, *[_fmt(None if v is None else v * scale, fmt) for v in values])
    table.add_row("reward", *["diverged" if r.diverged else _fmt(r.reward, ".4f") for r in rows.values()])
    if latency_ms:
        table.add_row("CPU latency (ms)", *[_fmt(latency_ms.get(name), ".1f") for name in rows])
    return table


def print_metrics(rows: Mapping[str, EvaluationRecord], title: str = "candidates", console: Console | None = None) -> None:
    """Print :func:`metrics_table` of ``rows`` to the terminal."""
    (console or Console()).print(metrics_table(rows, title))
