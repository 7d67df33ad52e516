"""``collabprune`` command line (the only core module that imports ``agents`` and ``envs``).

Every command that takes a config also takes ``--set key.sub=value`` overrides. User errors
(:class:`~collabprune.errors.CollabPruneError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from collabprune.errors import CollabPruneError, ConfigError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", type=Path, nargs=None if required else "?", help="run config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set search.rounds=5 (repeatable)")


def _ratios(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0.5,0.5,1") from None


def _load(args: argparse.Namespace):
    from collabprune.config import load_config

    return load_config(args.config, args.overrides)


def cmd_data_demo(args: argparse.Namespace) -> int:
    """``collabprune data demo --out DIR [--task T] [--size N]``: build a demo dataset from shipped photographs."""
    from collabprune.data.demo import build_demo_dataset

    counts = build_demo_dataset(args.out, size=args.size, crops_per_image=args.crops_per_image, seed=args.seed,
                                task=args.task)
    print(f"demo dataset in {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    """``collabprune train-teacher CONFIG``: pix2pix or CycleGAN teacher training (resumable)."""
    from collabprune.demo import teacher_line
    from collabprune.teacher import train_teacher

    cfg = _load(args)
    report = train_teacher(cfg, progress=not args.no_progress)
    print(f"teacher in {cfg.teacher.checkpoint_dir}: {report['epochs_done']}/{report['epochs_total']} epochs, "
          f"{report['seconds']:.0f} s; {teacher_line(report)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``collabprune evaluate CONFIG [--g-ratios ...] [--d-ratios ...]``: score one candidate pair."""
    from collabprune.evaluation import evaluate_one
    from collabprune.report import print_metrics

    cfg = _load(args)
    result = evaluate_one(cfg, _ratios(args.g_ratios, "--g-ratios"), _ratios(args.d_ratios, "--d-ratios"))
    print_metrics(result)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``collabprune search CONFIG [--out RUN_DIR] [--address ADDR]`` or ``--resume RUN_DIR``."""
    from agents.driver import run_search
    from collabprune.runs import resume_config

    if args.resume is not None:
        cfg = resume_config(args.resume, args.overrides)
        run_dir = args.resume
    else:
        if args.config is None:
            raise ConfigError("search: give a CONFIG file or --resume RUN_DIR")
        cfg = _load(args)
        run_dir = args.out or cfg.output.run_dir
    summary = run_search(cfg, Path(run_dir), address=args.address, resume=args.resume is not None,
                         progress=not args.no_progress)
    reeval = summary.get("best_reeval") or {}
    where = "uniform" if summary["best_round"] == -1 else f"round {summary['best_round']} slot {summary['best_slot']}"
    again = f", re-evaluated {reeval['reward']:.4f} (uniform {reeval['uniform_reward']:.4f})" if reeval else ""
    print(f"search finished: {summary['rounds']} rounds ({summary['evaluations']} evaluations), best: {where}, "
          f"search reward {summary['best_reward']:.4f}{again}; run dir {run_dir}")
    for b in summary.get("front") or []:  # a multi-budget search: each budget's best
        at = "uniform" if b["round"] == -1 else f"round {b['round']} slot {b['slot']}"
        score = b["reeval_reward"] if b["reeval_reward"] is not None else b["reward"]
        print(f"  budget {b['budget']:g}: best {at}, G MACs {b['g_macs_fraction']:.3f} of the teacher's, "
              f"reward {score:.4f} (collabprune export {run_dir} --budget {b['budget']:g} --out DIR)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``collabprune export RUN_DIR --out DIR [--onnx]``: the best pair as a loadable sub-network."""
    from collabprune.export import export_best

    if args.calibration_images < 1:
        raise ConfigError(f"export: --calibration-images must be >= 1, got {args.calibration_images}")
    info = export_best(args.run_dir, args.out, onnx=args.onnx, int8=args.int8, calibration_images=args.calibration_images,
                       budget=args.budget)
    print(f"exported to {args.out}: G {info['generator']['macs'] / 1e9:.3f} GMACs, "
          f"{info['generator']['params'] / 1e6:.2f} M params")
    if args.int8:
        from collabprune.quantize import Int8Export

        print(Int8Export(**info["int8"]).summary())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``collabprune inspect RUN_DIR [--agent g|d] [--out DIR] [--json]``: what the agents learned, and
    the quality/cost front of every evaluated candidate (``plots/front.png``)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from agents.inspect_policies import inspect_run

    roles = {"g": ["generator"], "d": ["discriminator"], None: None}[args.agent]
    report = inspect_run(args.run_dir, roles, args.out)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console()
    best = report["best"] or {}
    reeval = best.get("reeval") or {}
    again = f", re-evaluated {reeval['reward']:.4f} with fresh seeds" if reeval else ""
    console.print(f"{report['run_dir']}: {report['rounds']} evaluations, best round {best.get('round')} "
                  f"slot {best.get('slot', 0)}: search reward {best.get('reward')}{again}")
    for agent in report["agents"]:
        if agent["checkpoint_round"] is None:
            console.print(f"{agent['role']}: no checkpoint yet")
            continue
        at = f" at budget {agent['budget']:g}" if agent.get("budget") is not None else ""
        table = Table(title=f"{agent['role']} agent{at} ({agent['algo']}, checkpoint after round "
                            f"{agent['checkpoint_round']}), peer block of the best pair; deterministic "
                            f"proposal uses {agent['executed_macs_fraction']:.3f} of the teacher's MACs")
        for col in ("#", "group", "channels", "action", "asks", "keeps (channels)", "spread",
                    agent["value_kind"], "best ratio", "best channels"):
            table.add_column(col, justify="left" if col == "group" else "right")
        for g in agent["groups"]:
            best_ratio = "-" if g["best_ratio"] is None else f"{g['best_ratio']:.3f}"
            table.add_row(str(g["index"]), g["name"], str(g["channels"]), f"{g['action']:+.2f}",
                          f"{g['requested_ratio']:.3f}", f"{g['policy_ratio']:.3f} ({g['policy_channels']})",
                          f"{g['spread']:.3f}", f"{g['value']:.3f}", best_ratio, str(g["best_channels"]))
        console.print(table)
    front = report.get("front") or []
    if front:
        console.print("front (Pareto: no candidate is both cheaper and closer): " + ", ".join(
            f"{p['g_macs_fraction']:.3f} MACs -> FD {p['fd']:.3f}"
            + (f" ({p['latency_ms']:.1f} ms)" if p.get("latency_ms") is not None else "") for p in front))
    console.print("plots: " + ", ".join(report["plots"]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``collabprune demo``: data -> teacher -> search -> export -> summary, on configs/demo.yaml."""
    from agents.driver import run_search
    from collabprune.config import load_config
    from collabprune.demo import run_demo

    cfg = load_config(args.config or DEMO_CONFIG, args.overrides)
    run_demo(cfg, search=run_search, progress=not args.no_progress)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """``collabprune submit CONFIG --address http://HEAD:8265 [--storage PATH]``: a search as a Ray job;
    ``collabprune submit --resume RUN_DIR --address ...`` continues a stopped one."""
    from collabprune import jobs

    if (args.config is None) == (args.resume is None):
        raise ConfigError("submit: give a CONFIG file or --resume RUN_DIR (one of them)")
    job = jobs.submit(args.config, address=args.address, storage=args.storage, overrides=args.overrides,
                      job_id=args.name, ship_code=not args.no_ship_code, resume=args.resume)
    print(f"submitted job {job['job_id']} to {job['address']}\nrun dir: {job['run_dir']}")
    if not args.wait:
        print(f"follow it: collabprune jobs logs {job['job_id']} --address {job['address']} --follow")
        return 0
    status = jobs.wait_for_job(job["job_id"], address=args.address)
    print(jobs.format_status(jobs.job_status(job["job_id"], address=args.address)))
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    """``collabprune jobs list|status|logs|stop [ID] --address ...``: the Ray jobs of a cluster."""
    from collabprune import jobs

    if args.jobs_command == "list":
        print(jobs.format_jobs(jobs.list_jobs(address=args.address)))
    elif args.jobs_command == "status":
        print(jobs.format_status(jobs.job_status(args.job_id, address=args.address)))
    elif args.jobs_command == "logs" and args.follow:
        for chunk in jobs.follow_logs(args.job_id, address=args.address):
            print(chunk, end="", flush=True)
    elif args.jobs_command == "logs":
        print(jobs.job_logs(args.job_id, address=args.address), end="")
    else:
        running = jobs.stop_job(args.job_id, address=args.address)
        print(f"stop requested for job {args.job_id}" if running else f"job {args.job_id} was not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``collabprune`` argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(prog="collabprune", description="Collaborative RL channel pruning of GANs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    # the same flag after any sub-command; SUPPRESS keeps a flag given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    from collabprune.data.demo import TASKS as DEMO_TASKS

    p = sub.add_parser("data", parents=[common], help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("demo", parents=[common], help="build a demo dataset (paired, or unpaired for the cartoon task) "
                        "from photographs that ship with scikit-image (and scikit-learn)")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--task", choices=list(DEMO_TASKS), default="restore")
    d.add_argument("--size", type=int, default=128)
    d.add_argument("--crops-per-image", type=int, default=24)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_data_demo)

    p = sub.add_parser("train-teacher", parents=[common], help="train the pix2pix or CycleGAN teacher of a config")
    _add_config(p)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("evaluate", parents=[common], help="score one hand-chosen candidate pair (uniform if no ratios)")
    _add_config(p)
    p.add_argument("--g-ratios", help="comma-separated keep ratio per generator group")
    p.add_argument("--d-ratios", help="comma-separated keep ratio per discriminator group")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("search", parents=[common], help="run the collaborative search")
    _add_config(p, required=False)
    p.add_argument("--out", type=Path, help="run directory (default: output.run_dir)")
    p.add_argument("--address", help="Ray cluster address (default: embedded Ray)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed run")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", parents=[common], help="export the best pair of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--onnx", action="store_true", help="also write generator.onnx")
    p.add_argument("--int8", action="store_true", help="also write generator.int8.onnx (onnxruntime static "
                   "quantization; implies --onnx) with its held-out metrics and latency beside fp32")
    p.add_argument("--calibration-images", type=int, default=64, metavar="N",
                   help="training images that calibrate the int8 activation ranges (default 64)")
    p.add_argument("--budget", type=float, metavar="FRACTION", help="a multi-budget search's generator budget "
                   "(one of search.budgets): export its best pair (default: the primary budget's best.json)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", parents=[common], help="the agents' policies per prunable group, and search plots")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--agent", choices=["g", "d"], help="only the generator (g) or discriminator (d) agent")
    p.add_argument("--out", type=Path, help="folder for the PNGs (default RUN_DIR/plots)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", parents=[common], help="the whole demo: data, teacher, search, export, summary")
    _add_config(p, required=False)
    p.set_defaults(func=cmd_demo)

    address_help = "Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS or 127.0.0.1:8265)"
    p = sub.add_parser("submit", parents=[common], help="submit a search to a Ray cluster as a Ray job")
    _add_config(p, required=False)
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a stopped or killed job's run directory (on the shared storage) as a new job")
    p.add_argument("--address", help=address_help)
    p.add_argument("--storage", type=Path,
                   help="shared folder the cluster writes the run directory to (STORAGE/JOB_ID)")
    p.add_argument("--name", help="job id and run-dir name (default: collabprune-<config>-<time>-<rand>)")
    p.add_argument("--no-ship-code", action="store_true",
                   help="use the collabprune installed on the cluster instead of shipping this one")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless it succeeded")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", parents=[common], help="list, inspect, follow or stop Ray jobs")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    for name, help_text in [("list", "list the cluster's jobs"), ("status", "state, rounds and best reward of a job"),
                            ("logs", "print a job's logs"), ("stop", "stop a running job")]:
        j = jsub.add_parser(name, parents=[common], help=help_text)
        if name != "list":
            j.add_argument("job_id", metavar="ID", help="the job (submission) id")
        if name == "logs":
            j.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        j.add_argument("--address", help=address_help)
        j.set_defaults(func=cmd_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``collabprune`` console script.

    :returns: the exit code: 0 on success, 2 on a user error (one line on stderr).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CollabPruneError as err:
        print(f"collabprune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("collabprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
