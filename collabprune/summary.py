"""The held-out summary of a finished run: teacher, uniform and best found (DESIGN.md §4.1, §6).

The uniform candidate and the run's best pair (``best.json``, after the top-k re-evaluation) each get
the final fine-tuning (``finetune.final_steps``) under ``finetune.final_seeds`` seeds and are measured
on the test split (:class:`~collabprune.heldout.HeldoutEvaluator`); the teacher is measured as it
is. Per seed, the best pair is compared with the uniform candidate fine-tuned under the same seed
(a paired difference); the noise floor the summary states is :func:`noise_floor` of those differences. The
results are cached in ``RUN_DIR/heldout/`` (one JSON per candidate and seed), and the fine-tuned best
pair of the first seed is saved in ``RUN_DIR/final/`` (what ``export`` ships). A PNG shows input,
teacher, uniform, best found and ground truth for a few test images.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collabprune.config import RunConfig
from collabprune.evaluation import CandidateEvaluator
from collabprune.heldout import HELDOUT_METRICS, HeldoutEvaluator, HeldoutResult, higher_is_better, primary_metric
from collabprune.io import atomic_write_json
from collabprune.records import EvaluationRecord
from collabprune.runs import UNIFORM_ROUND, RunDir

HELDOUT_DIR = "heldout"
FINAL_DIR = "final"
FINAL_UNIFORM_DIR = "final_uniform"
SAMPLES_FILE = "samples.png"


@dataclass
class Verdict:
    """Best found against uniform on the primary held-out metric.

    :param metric: the metric (:func:`~collabprune.heldout.primary_metric`).
    :param improvement: mean over seeds of the paired improvement (positive = best found is better),
        in the metric's units.
    :param noise: the noise floor of the paired difference (:func:`noise_floor`; 0 with one seed).
    :param seeds: the final fine-tuning seeds.
    :param best_is_uniform: the search found nothing better than uniform (its best is uniform itself).
    """

    metric: str
    improvement: float
    noise: float
    seeds: list[int]
    best_is_uniform: bool

    @property
    def beats_uniform(self) -> bool:
        """Better than uniform by more than ``2 * noise / sqrt(seeds)`` (twice the standard error of the mean
        paired difference, with :func:`noise_floor` as its standard deviation)."""
        if self.best_is_uniform:
            return False
        se = self.noise / math.sqrt(len(self.seeds)) if len(self.seeds) > 1 else 0.0
        return self.improvement > 2 * se and self.improvement > 0

    def sentence(self) -> str:
        """One line a person can judge."""
        if self.best_is_uniform:
            return ("The search found nothing better than the uniform candidate: after the top-k re-evaluation "
                    "with fresh seeds, uniform kept the best reward. Shown: uniform twice.")
        times = self.improvement / self.noise if self.noise > 0 else math.inf
        better = "better" if self.improvement > 0 else "worse"
        core = (f"best found is {abs(self.improvement):.4f} test {self.metric} {better} than uniform (mean of paired "
                f"differences over final seeds {self.seeds}; noise floor {self.noise:.4f}, so {times:.1f}x the noise)")
        return core + (": it beats uniform." if self.beats_uniform else ": within the noise, no difference.")


def noise_floor(diffs: list[float], uniform: list[float], best: list[float]) -> float:
    """The noise floor of a paired held-out difference, in the metric's units.

    The larger of two standard deviations: that of the per-seed paired differences ``diffs``, and the
    final-seed spread of each candidate, pooled ``sqrt((sd_u^2 + sd_b^2) / 2)``. With the usual two final
    seeds the first alone is one number's worth of evidence and can be near 0 by chance (two seeds that
    move both candidates alike), which would make any improvement look like hundreds of times the noise.

    :param diffs: paired differences best - uniform (or the reverse), one per final seed.
    :param uniform: the uniform candidate's metric per final seed.
    :param best: the best pair's metric per final seed.
    :returns: the floor; 0 when no list has two values.
    """
    def sd(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    return max(sd(diffs), math.sqrt((sd(uniform) ** 2 + sd(best) ** 2) / 2))


@dataclass
class RunSummary:
    """The held-out numbers of a run.

    :param teacher: the teacher's held-out metrics.
    :param uniform: the uniform candidate's, one per final seed.
    :param best: the best pair's, one per final seed (the uniform's when the best is uniform).
    :param best_record: ``best.json``.
    :param verdict: best found against uniform.
    :param samples: the sample grid PNG.
    """

    teacher: HeldoutResult
    uniform: list[HeldoutResult]
    best: list[HeldoutResult]
    best_record: EvaluationRecord
    verdict: Verdict
    samples: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def mean(self, rows: list[HeldoutResult], metric: str) -> float | None:
        vals = [r.metric(metric) for r in rows if r.metric(metric) is not None]
        return statistics.fmean(vals) if vals else None  # type: ignore[arg-type]

    def std(self, rows: list[HeldoutResult], metric: str) -> float | None:
        vals = [r.metric(metric) for r in rows if r.metric(metric) is not None]
        return statistics.stdev(vals) if len(vals) > 1 else None  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what ``RUN_DIR/heldout/summary.json`` holds)."""
        return {
            "teacher": self.teacher.to_dict(),
            "uniform": [r.to_dict() for r in self.uniform],
            "best": [r.to_dict() for r in self.best],
            "best_round": self.best_record.round,
            "best_slot": self.best_record.slot or 0,
            "verdict": {"metric": self.verdict.metric, "improvement": self.verdict.improvement,
                        "noise": self.verdict.noise, "seeds": self.verdict.seeds,
                        "best_is_uniform": self.verdict.best_is_uniform,
                        "beats_uniform": self.verdict.beats_uniform, "sentence": self.verdict.sentence()},
            "samples": str(self.samples) if self.samples else None,
        }


def final_seeds(cfg: RunConfig) -> list[int]:
    """The final fine-tuning seeds: ``finetune.seed, finetune.seed + 1, ...`` (``finetune.final_seeds`` of them)."""
    return [cfg.finetune.seed + i for i in range(cfg.finetune.final_seeds)]


def _cached(held: HeldoutEvaluator, folder: Path, name: str, g: list[float], d: list[float], seed: int,
            save_dir: Path | None) -> HeldoutResult:
    path = folder / f"{name}_seed{seed}.json"
    key = {"g_ratios": g, "d_ratios": d, "seed": seed, "final_steps": held.cfg.finetune.final_steps}
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key and (save_dir is None or (save_dir / "generator.pt").is_file()):
            return HeldoutResult.from_dict(data["result"])
    result = held.evaluate(g, d, seed, save_dir=save_dir)
    atomic_write_json(path, {"key": key, "result": result.to_dict()})
    return result


def heldout_evaluator(cfg: RunConfig, run_dir: Path) -> HeldoutEvaluator:
    """The held-out evaluator of a run: its caches in ``RUN_DIR/heldout/cache`` (evaluation network,
    FID statistics), its candidates built on the search's evaluator cache in ``RUN_DIR`` (teacher
    evaluation, FID statistics, a warmed-up teacher D).

    :raises CheckpointError: missing or mismatched teacher checkpoints.
    :raises DatasetError: missing test or train split.
    """
    return HeldoutEvaluator(cfg, Path(run_dir) / HELDOUT_DIR / "cache", candidates=CandidateEvaluator(cfg, run_dir))


def summarise_run(cfg: RunConfig, run_dir: str | Path, samples: bool = True) -> RunSummary:
    """Held-out metrics of teacher, uniform and best found of a finished run (cached; see module docstring).

    :param cfg: the run's config.
    :param run_dir: the run directory (with ``best.json``).
    :param samples: also write the sample grid ``RUN_DIR/heldout/samples.png``.
    :raises RunDirError: not a run directory, or no best pair yet.
    """
    from collabprune.errors import RunDirError

    run_dir = Path(run_dir)
    run = RunDir.read(run_dir)
    best = run.read_best()
    uniform = run.get(UNIFORM_ROUND)
    if best is None or uniform is None:
        raise RunDirError(f"{run_dir}: no best pair yet (the search has not evaluated the uniform candidate)")
    folder = run_dir / HELDOUT_DIR
    held = heldout_evaluator(cfg, run_dir)
    seeds = final_seeds(cfg)
    best_is_uniform = best.round == UNIFORM_ROUND
    teacher = held.teacher()
    u_rows = [_cached(held, folder, "uniform", uniform.g_ratios, uniform.d_ratios, s,
                      run_dir / FINAL_UNIFORM_DIR if i == 0 else None) for i, s in enumerate(seeds)]
    if best_is_uniform:
        import shutil

        shutil.rmtree(run_dir / FINAL_DIR, ignore_errors=True)
        shutil.copytree(run_dir / FINAL_UNIFORM_DIR, run_dir / FINAL_DIR)
    b_rows = u_rows if best_is_uniform else [
        _cached(held, folder, "best", best.g_ratios, best.d_ratios, s, run_dir / FINAL_DIR if i == 0 else None)
        for i, s in enumerate(seeds)]
    metric = primary_metric(cfg)
    sign = 1.0 if higher_is_better(metric) else -1.0
    diffs = [sign * (b.metric(metric) - u.metric(metric))  # type: ignore[operator]
             for b, u in zip(b_rows, u_rows) if b.metric(metric) is not None and u.metric(metric) is not None]
    u_vals = [u.metric(metric) for u in u_rows if u.metric(metric) is not None]
    b_vals = [b.metric(metric) for b in b_rows if b.metric(metric) is not None]
    verdict = Verdict(metric, statistics.fmean(diffs) if diffs else math.nan,
                      noise_floor(diffs, u_vals, b_vals), seeds, best_is_uniform)
    out = RunSummary(teacher, u_rows, b_rows, best, verdict)
    if samples:
        out.samples = write_samples(held, run_dir, folder / SAMPLES_FILE, best_is_uniform)
    atomic_write_json(folder / "summary.json", out.to_dict())
    return out


def write_samples(held: HeldoutEvaluator, run_dir: Path, path: Path, best_is_uniform: bool) -> Path | None:
    """The sample grid: input | teacher | uniform | best found | ground truth (test split; the students
    after their final fine-tuning under the first final seed). Unpaired data has no ground truth: the
    last column shows real B test images, which are not the inputs' targets."""
    from collabprune.models import load_candidate
    from collabprune.models.subnet import NETWORK_FILES
    from collabprune.plots import plot_sample_grid

    final, final_u = run_dir / FINAL_DIR, run_dir / FINAL_UNIFORM_DIR
    if not (final / NETWORK_FILES["generator"]).is_file() or not (final_u / NETWORK_FILES["generator"]).is_file():
        return None
    columns = [("input", held.test_a), ("teacher", held.outputs(held.candidates.teacher_g)),
               ("uniform", held.outputs(load_candidate(final_u)[0]))]
    if not best_is_uniform:
        columns.append(("best found", held.outputs(load_candidate(final)[0])))
    columns.append(("ground truth", held.test_b) if held.paired else ("real B (unpaired)", held.test_b))
    return plot_sample_grid(columns, path)


__all__ = ["FINAL_DIR", "HELDOUT_DIR", "HELDOUT_METRICS", "RunSummary", "Verdict", "final_seeds", "heldout_evaluator",
           "summarise_run"]
