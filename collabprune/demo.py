"""The main job: demo data -> teacher -> collaborative search -> export -> summary (``collabprune demo``).

Every step is cached: the dataset and the teacher are built only when missing, a finished search is
not repeated and an interrupted one is resumed. The search itself is passed in by the CLI
(``agents.driver.run_search``) so that this core module does not import ``agents`` (DESIGN.md §1).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from collabprune.config import RunConfig
from collabprune.data.demo import build_demo_dataset
from collabprune.export import export_best
from collabprune.metrics.latency import measure_latency
from collabprune.models import build_from_spec, load_state_dict_strict, load_subnet, read_state_dict
from collabprune.models.subnet import NETWORK_FILES, SPEC_FILES
from collabprune.pruning.spec import SubnetSpec
from collabprune.report import print_metrics
from collabprune.runs import META_FILE, RunDir, TEACHER_ROUND, UNIFORM_ROUND, candidate_dir
from collabprune.teacher import load_teacher, read_report, teacher_files_exist, train_teacher

SearchFn = Callable[..., dict[str, Any]]


def _cpu_latency_ms(net: Any, cfg: RunConfig) -> float:
    shape = (1, cfg.data.input_nc, cfg.data.crop_size, cfg.data.crop_size)
    return 1e3 * measure_latency(net, shape, "cpu", warmup=3, repeats=20)["median_s"]


def _candidate_generator(run_dir: Path, round_index: int) -> Any:
    folder = candidate_dir(run_dir, round_index)
    spec = SubnetSpec.from_json((folder / SPEC_FILES["generator"]).read_text())
    weights = folder / NETWORK_FILES["generator"]
    return load_state_dict_strict(build_from_spec(spec), read_state_dict(weights), str(weights)).eval()


def run_demo(cfg: RunConfig, search: SearchFn, progress: bool = True, console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo on ``cfg`` (normally ``configs/demo.yaml``).

    :param cfg: the run config.
    :param search: ``run_search(cfg, run_dir, address=None, resume=False, progress=True) -> summary``.
    :param progress: show progress bars.
    :returns: ``{"timings": seconds per step, "summary": search summary, "rows": table rows}``.
    :raises CollabPruneError: any user error of the steps (bad data folder, checkpoint, budget).
    """
    console = console or Console()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    d = cfg.data.demo
    counts = build_demo_dataset(cfg.data.root, size=d.size, crops_per_image=d.crops_per_image, seed=d.seed)
    timings["data_s"] = time.perf_counter() - t
    console.print(f"[bold]data[/bold] {cfg.data.root}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    t = time.perf_counter()
    report = read_report(cfg)
    if not teacher_files_exist(cfg) or report is None or report["epochs_done"] < report["epochs_total"]:
        report = train_teacher(cfg, progress=progress)
    timings["teacher_s"] = time.perf_counter() - t
    console.print(
        f"[bold]teacher[/bold] {cfg.teacher.checkpoint_dir}: test L1 {report['test_l1']:.4f} vs mean-image "
        f"baseline {report['mean_image_l1']:.4f}; samples in {cfg.teacher.checkpoint_dir / 'teacher_samples.png'}"
    )

    t = time.perf_counter()
    run_dir = Path(cfg.output.run_dir)
    resume = (run_dir / META_FILE).is_file()
    summary = search(cfg, run_dir, address=None, resume=resume, progress=progress)
    timings["search_s"] = time.perf_counter() - t

    t = time.perf_counter()
    export_dir = run_dir / "export"
    info = export_best(run_dir, export_dir)
    timings["export_s"] = time.perf_counter() - t

    run = RunDir.read(run_dir)
    teacher_g, _ = load_teacher(cfg)
    best_g, _ = load_subnet(export_dir)
    rows = {
        "teacher": dict(run.get(TEACHER_ROUND), latency_ms=_cpu_latency_ms(teacher_g, cfg)),
        "uniform": dict(run.get(UNIFORM_ROUND), latency_ms=_cpu_latency_ms(_candidate_generator(run_dir, UNIFORM_ROUND), cfg)),
        f"best (round {info['round']})": dict(run.read_best(), latency_ms=_cpu_latency_ms(best_g, cfg)),
    }
    print_metrics(rows, title=f"demo: teacher vs uniform vs best found ({cfg.pruning.budget.generator:.0%} G budget)",
                  console=console)
    console.print(f"export: {export_dir} (load with collabprune.models.load_subnet)")
    console.print("times: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()))
    return {"timings": timings, "summary": summary, "rows": rows}
