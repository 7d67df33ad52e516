"""Helpers shared by the benchmark scripts: arguments, config loading, machine record, JSON output.

Nothing here measures anything; every metric comes from the project's own functions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from collabprune.backends import machine_info  # noqa: F401  (the benchmarks' machine description)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def script_mode_path_fix() -> None:
    """Make ``python benchmarks/<name>.py`` behave like ``python -m benchmarks.<name>``.

    Run as a file, Python puts ``benchmarks/`` first on ``sys.path`` (so ``fid.py`` could shadow a
    top-level ``fid`` module); replace it with the repository root.
    """
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(here)]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: config, ``--set``, ``--out``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                        help="run config YAML (default: configs/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override section.field=value (repeatable)")
    _add_out(parser, name)
    return parser


def results_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser for the tools that read ``benchmarks.quality`` results and run nothing: no config, a
    required ``--budget`` (the generator MACs budget whose runs they read) and ``--out``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--budget", type=float, required=True, help="generator MACs budget (fraction of the teacher's)")
    _add_out(parser, name)
    return parser


def _add_out(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help=f"JSON result file (default: benchmarks/results/{name}.json)")


def same_budget(value: Any, budget: float) -> bool:
    """Whether a result's recorded ``budget`` (a number, as JSON stores it) is ``budget``; a missing one is not."""
    return value is not None and math.isclose(float(value), budget, rel_tol=1e-9)


def input_error(name: str, message: str) -> NoReturn:
    """Bad input found after parsing: one error line on stderr, exit code 2 (argparse's convention), nothing
    written. (Errors found while parsing go through ``parser.error``: the usage, then one error line.)

    :param name: the benchmark's module name (``python -m benchmarks.<name>``).
    """
    print(f"python -m benchmarks.{name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation of the pairs where both values are finite; None with fewer than 3 such
    pairs or when it is undefined (a constant side)."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(rho) if math.isfinite(rho) else None


def load_cfg(config: str | os.PathLike[str], overrides: Sequence[str], extra: Sequence[str] = ()) -> Any:
    """The validated run config: the YAML file, then ``overrides``, then ``extra`` (benchmark-set)."""
    from collabprune.config import load_config

    return load_config(config, [*overrides, *extra])


def parse_list(text: str, kind: Callable[[str], Any] = float) -> list[Any]:
    """``"0.25,0.5"`` -> ``[0.25, 0.5]`` (empty items dropped)."""
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (std 0 for one value; None for none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def fmt(value: float | None, digits: int = 4) -> str:
    """A compact number for tables (``-`` for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def fmt_pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``mean ± std`` for tables (``-`` for missing)."""
    if mean is None:
        return "-"
    return fmt(mean, digits) if not std else f"{fmt(mean, digits)} ± {fmt(std, 2)}"


def print_table(table: Any) -> None:
    """Print a rich table, at least 200 columns wide when the output is not a terminal (logs)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    console.print(table)


class InProcessLink:
    """In-process :class:`agents.pruning_agent.CoordinatorLink` for one agent searching alone (benchmark
    only): each of a round's ``slots`` proposals is scored by ``reward(ratios)``; there is no peer (an
    empty peer block, as with the exchange off) and nothing logged to replay.

    :param reward: keep ratios of one proposal -> its reward.
    :param slots: candidates per round (the agent's envs).
    """

    def __init__(self, reward: Callable[[list[float]], float], slots: int = 1) -> None:
        self.reward = reward
        self.slots = slots

    def submit(self, role: str, round_index: int, proposals: list[dict[str, Any]], agent_s: float,
               while_waiting: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        from envs.channel_env import PeerInfo

        if while_waiting is not None:
            while_waiting()
        return [{"reward": self.reward(list(p["ratios"])), "peer": PeerInfo().to_dict()} for p in proposals]

    def peers(self, role: str, round_index: int) -> list[dict[str, Any]]:
        from envs.channel_env import PeerInfo

        return [PeerInfo().to_dict() for _ in range(self.slots)]

    def logged_proposals(self, role: str) -> dict[int, dict[int, dict[str, Any]]]:
        return {slot: {} for slot in range(self.slots)}


def read_quality_runs(path: Path) -> list[Any]:
    """The ``runs`` list of a ``benchmarks.quality`` result file, its items unchecked.

    :raises OSError: the file cannot be read.
    :raises ValueError: it is not JSON, or not a quality result (no ``runs`` list).
    """
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg}, line {exc.lineno})") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise ValueError("not a benchmarks.quality result (no 'runs' list)")
    return runs


def write_results(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the machine record and timestamps when absent) as JSON, atomically."""
    from collabprune.io import atomic_write_json

    payload.setdefault("machine", machine_info())
    payload.setdefault("finished", time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(Path(path), _finite(payload))


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, paths -> strings, tuples -> lists, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
