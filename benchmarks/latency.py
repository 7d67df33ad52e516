"""Latency vs MACs: does a channel-pruned generator get faster by as much as its MACs drop?

For each generator (the config's, pix2pix's full-size ``unet_256`` and CycleGAN's full-size
``resnet_9blocks``, both ngf=64 at 256x256) the teacher and the uniform candidates at several MACs
budgets (the largest single keep ratio that meets the budget, :meth:`ChannelSpace.uniform_ratio`)
are pruned physically with :func:`collabprune.pruning.prune.prune_model` -- no fine-tuning: latency
does not depend on the weights' values, so randomly initialised networks are used and no teacher
checkpoint is needed. For each one we record MACs in both conventions, parameters, and the measured
forward latency (:func:`collabprune.metrics.latency.measure_latency`, median of ``--repeats``) at
batch 1 and 8, on the CPU and, when present, on CUDA. The table shows the speed-up over the teacher, the MACs
reduction, and their ratio (1.0 = latency falls exactly as MACs do).

``--int8`` adds the int8 rows (:mod:`collabprune.quantize`, onnxruntime static quantization): for each
``--model``, its uniform candidate at ``--int8-budget`` is exported to ONNX and quantized, calibrated on
random inputs (random weights: latency only), and timed in PyTorch fp32, onnxruntime fp32 and
onnxruntime int8 at each batch size; with ``--int8-run RUN_DIR`` (a finished run, e.g. ``runs/demo``
after the demo) the run's exported student is quantized as ``collabprune export --int8`` does it,
calibrated on training images, and its held-out metrics in fp32 and int8 are reported beside its latency.
Each int8 row says how many ops onnxruntime runs in integers and which stay fp32.

``--table`` checks the latency model that latency budgets project with
(:mod:`collabprune.pruning.latency_model`): for each ``--model`` and ``--table-backends`` entry it is
fitted as a search fits it (``pruning.latency_samples`` timed sub-networks), then 20 other random
sub-networks (``--table-test``) are pruned, timed and predicted; the table reports the mean and the
largest |predicted - measured| / measured.

    python -m benchmarks.latency [CONFIG] [--set k=v] [--model config,unet_256,resnet_9blocks]
                                 [--budgets 0.75,0.5,0.25,0.125] [--batches 1,8] [--repeats 10]
                                 [--int8 [--int8-budget 0.25] [--int8-run RUN_DIR]]
                                 [--table [--table-backends torch-cpu,onnxruntime-cpu] [--table-test 20]]
                                 [--out benchmarks/results/latency.json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/latency.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

import torch
from rich.table import Table

from benchmarks._shared import base_parser, fmt, load_cfg, machine_info, parse_list, print_table, write_results
from collabprune.backends import backend_latency_s
from collabprune.config import RunConfig
from collabprune.errors import BudgetError
from collabprune.metrics.latency import measure_latency
from collabprune.metrics.macs import macs, macs_published, params
from collabprune.models import build_generator, generator_kwargs
from collabprune.onnx_export import ONNX_FILE, cpu_session, ort_latency_ms, write_onnx
from collabprune.pruning.latency_model import fit_latency_model, sample_allocations
from collabprune.pruning.prune import prune_model
from collabprune.pruning.space import ChannelSpace
from collabprune.quantize import INT8_FILE, quantize_generator, runtime_precision

#: ``--model unet_256``: pix2pix's full-size generator (upstream defaults, GPU rounding of 8).
UNET_256 = [
    "model.net_g=unet_256", "model.ngf=64", "data.load_size=286", "data.crop_size=256",
    "pruning.round_to=8", "pruning.min_channels=8",
]
#: ``--model resnet_9blocks``: CycleGAN's full-size generator (upstream defaults: ngf=64, InstanceNorm
#: without affine parameters, no dropout, 3 -> 3 channels at 256x256; GPU rounding of 8).
RESNET_9BLOCKS = [
    "model.family=cyclegan", "data.dataset_mode=unaligned", "data.demo.task=sketch",  # no data is read
    "model.net_g=resnet_9blocks", "model.ngf=64", "model.norm=instance", "model.use_dropout=false",
    "data.input_nc=3", "data.output_nc=3", "data.load_size=286", "data.crop_size=256",
    "pruning.round_to=8", "pruning.min_channels=8",
]
#: the named ``--model`` entries besides ``config``: their overrides, applied after the config's
MODELS: dict[str, list[str]] = {"unet_256": UNET_256, "resnet_9blocks": RESNET_9BLOCKS}


def parse_args() -> Any:
    parser = base_parser("latency", __doc__.split("\n")[0])
    parser.add_argument("--model", default="config,unet_256",
                        help="comma list of 'config' (the config's generator), 'unet_256' (pix2pix) and "
                             "'resnet_9blocks' (CycleGAN); default: config,unet_256")
    parser.add_argument("--budgets", default="0.75,0.5,0.25,0.125", help="generator MACs budgets (teacher = 1.0 always)")
    parser.add_argument("--batches", default="1,8", help="batch sizes")
    parser.add_argument("--repeats", type=int, default=10, help="timed forwards per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards first")
    parser.add_argument("--devices", default=None, help="comma list (default: cpu, plus cuda when present)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 1 warm-up, budgets 0.5")
    parser.add_argument("--int8", action="store_true", help="add the int8 rows (onnxruntime static quantization)")
    parser.add_argument("--int8-budget", type=float, default=0.25, help="budget of the --model int8 rows (default 0.25)")
    parser.add_argument("--int8-run", type=Path, default=None, metavar="RUN_DIR",
                        help="a finished run whose exported student gets an int8 row with held-out metrics")
    parser.add_argument("--table", action="store_true", help="check the latency model: predicted vs measured")
    parser.add_argument("--table-backends", default="torch-cpu,onnxruntime-cpu", help="backends of --table")
    parser.add_argument("--table-test", type=int, default=20, help="random sub-networks --table predicts")
    return parser.parse_args()


def model_config(args: Any, which: str) -> RunConfig:
    """The run config of one ``--model`` entry."""
    # the budgets here are MACs fractions (--budgets): a config's latency target is replaced
    macs_budget = ["pruning.budget.generator=0.25", "pruning.latency_model=null"]
    if which == "config":
        return load_cfg(args.config, args.overrides, macs_budget)
    if which in MODELS:
        return load_cfg(args.config, args.overrides, [*MODELS[which], *macs_budget])
    raise SystemExit(f"--model: unknown entry {which!r} (allowed: config, {', '.join(MODELS)})")


def pruned_generators(cfg: RunConfig, budgets: list[float]) -> list[dict[str, Any]]:
    """The teacher and its uniform candidates: ``{"budget", "ratio", "net", "kept"}`` each."""
    teacher = build_generator(cfg, inplace=False).eval()
    size = cfg.data.crop_size
    shape = (1, cfg.data.input_nc, size, size)
    space = ChannelSpace.of("g", teacher, shape, cfg.pruning)
    out = [{"budget": 1.0, "ratio": 1.0, "net": teacher, "kept": [g.channels for g in space.groups]}]
    for budget in budgets:
        try:
            ratio = space.uniform_ratio(budget)
        except BudgetError as err:
            print(f"skipping budget {budget}: {err}")
            continue
        net, spec = prune_model(teacher, torch.zeros(shape), [ratio] * space.num_groups, cfg.pruning, 0,
                                generator_kwargs(cfg, inplace=False))
        out.append({"budget": budget, "ratio": ratio, "net": net.eval(), "kept": spec.kept})
    return out


def _ort_ms(session: Any, shape: tuple[int, ...], args: Any) -> float:
    x = (torch.rand(shape) * 2 - 1).numpy()
    return ort_latency_ms(session, x, warmup=args.warmup, repeats=args.repeats)


def _int8_timings(net: torch.nn.Module, fp32: Path, int8: Path, channels: int, size: int, batches: list[int],
                  args: Any) -> dict[str, dict[str, float]]:
    """Per batch size: PyTorch fp32, onnxruntime fp32 and onnxruntime int8 latency, ms (medians)."""
    sessions = {"ort_fp32_ms": cpu_session(fp32), "ort_int8_ms": cpu_session(int8)}
    out = {}
    for batch in batches:
        shape = (batch, channels, size, size)
        row = {"torch_fp32_ms": 1e3 * measure_latency(net, shape, "cpu", args.warmup, args.repeats)["median_s"]}
        row.update({k: _ort_ms(s, shape, args) for k, s in sessions.items()})
        out[str(batch)] = row
    return out


def int8_rows(args: Any, batches: list[int]) -> list[dict[str, Any]]:
    """The int8 rows (see the module docstring): one per ``--model`` entry, plus ``--int8-run``'s student."""
    rows: list[dict[str, Any]] = []
    for which in parse_list(args.model, str):
        cfg = model_config(args, which)
        cands = pruned_generators(cfg, [args.int8_budget])
        if len(cands) < 2:
            continue
        net, size, c = cands[1]["net"], cfg.data.crop_size, cfg.data.input_nc
        print(f"[latency] int8: {cfg.model.net_g}/{cfg.model.ngf}@{size} at budget {args.int8_budget:g}")
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "g.onnx", Path(tmp) / "g.int8.onnx"
            write_onnx(net, torch.zeros(1, c, size, size), fp32)
            gen = torch.Generator().manual_seed(0)
            calib = [(torch.rand(8, c, size, size, generator=gen) * 2 - 1).numpy() for _ in range(2)]
            quantize_generator(fp32, int8, calib)
            int8_ops, fp32_ops = runtime_precision(int8)
            rows.append({"model": which, "name": f"{cfg.model.net_g}/{cfg.model.ngf}@{size}", "budget": args.int8_budget,
                         "weights": "random (latency only)", "calibration": "16 random inputs",
                         "int8_ops": int8_ops, "fp32_ops": fp32_ops, "heldout_fp32": None, "heldout_int8": None,
                         "latency": _int8_timings(net, fp32, int8, c, size, batches, args)})
    if args.int8_run is not None:
        from collabprune.export import export_best
        from collabprune.models import load_subnet

        with tempfile.TemporaryDirectory() as tmp:
            info = export_best(args.int8_run, tmp, int8=True)
            cfg = load_cfg(Path(args.int8_run) / "config.yaml", [])
            net, _ = load_subnet(tmp)
            q = info["int8"]
            rows.append({"model": str(args.int8_run), "name": f"{cfg.model.net_g}/{cfg.model.ngf}@{cfg.data.crop_size} "
                         f"(searched)", "budget": info["generator"]["macs_fraction"], "weights": info["weights"],
                         "calibration": f"{q['calibration_images']} training images", "int8_ops": q["int8_ops"],
                         "fp32_ops": q["fp32_ops"], "heldout_fp32": q["heldout_fp32"], "heldout_int8": q["heldout_int8"],
                         "latency": _int8_timings(net, Path(tmp) / ONNX_FILE, Path(tmp) / INT8_FILE, cfg.data.input_nc,
                                                  cfg.data.crop_size, batches, args)})
    return rows


def latency_model_rows(args: Any) -> list[dict[str, Any]]:
    """Fit each ``--model``'s latency model per backend, then predict ``--table-test`` other random
    sub-networks and time them (see the module docstring)."""
    import numpy as np

    rows = []
    for which in parse_list(args.model, str):
        cfg = model_config(args, which)
        teacher = build_generator(cfg, inplace=False).eval()
        shape = (1, cfg.data.input_nc, cfg.data.crop_size, cfg.data.crop_size)
        space = ChannelSpace.of("g", teacher, shape, cfg.pruning)
        for backend in parse_list(args.table_backends, str):
            t0 = time.time()
            model = fit_latency_model(teacher, space.table, shape, cfg.pruning, backend, 1, cfg.pruning.latency_samples)
            fit_s = time.time() - t0
            tests = sample_allocations(space.table.channels.tolist(), cfg.pruning, args.table_test + 1, seed=1)[1:]
            rng = np.random.default_rng(2)
            pred, meas = [], []
            for ratios in tests:
                ratios = [float(np.clip(r * 2.0 ** rng.uniform(-0.5, 0.5), cfg.pruning.r_min, 1.0)) for r in ratios]
                net, spec = prune_model(teacher, torch.zeros(shape), ratios, cfg.pruning)
                pred.append(model.predict_ms(space.table, spec.kept))
                meas.append(1e3 * backend_latency_s(net, shape, backend))
            err = np.abs(np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)
            rows.append({"model": which, "name": f"{cfg.model.net_g}/{cfg.model.ngf}@{cfg.data.crop_size}",
                         "backend": backend, "fit_samples": model.fit_samples, "fit_error_pct": model.fit_error_pct,
                         "fit_s": fit_s, "teacher_ms": model.teacher_ms, "test_n": len(tests),
                         "test_mean_error_pct": float(100 * err.mean()), "test_max_error_pct": float(100 * err.max()),
                         "test_measured_ms": [float(v) for v in meas], "test_predicted_ms": [float(v) for v in pred],
                         "coef_ms": list(model.coef_ms)})
            print(f"[latency] table {which} {backend}: fit {model.fit_error_pct:.1f}%, "
                  f"test mean {100 * err.mean():.1f}% max {100 * err.max():.1f}%")
    return rows


def latency_model_table(rows: list[dict[str, Any]]) -> Table:
    """Predicted vs measured latency of random sub-networks, per model and backend."""
    table = Table(title="Latency model (latency budgets): predicted vs measured, batch 1, random sub-networks")
    for col in ("model", "backend", "teacher ms", "fit samples", "fit error %", "test sub-networks",
                "mean |error| %", "max |error| %", "fit s"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for r in rows:
        table.add_row(r["name"], r["backend"], fmt(r["teacher_ms"]), str(r["fit_samples"]), fmt(r["fit_error_pct"], 3),
                      str(r["test_n"]), fmt(r["test_mean_error_pct"], 3), fmt(r["test_max_error_pct"], 3), fmt(r["fit_s"], 3))
    return table


def int8_table(rows: list[dict[str, Any]]) -> Table:
    """The int8 rows as a table: latency per batch, held-out metrics fp32 -> int8, ops in int8 / fp32."""
    table = Table(title="int8 students (onnxruntime static quantization, CPU): latency (ms, median) and held-out metrics")
    for col in ("model", "budget", "batch", "torch fp32", "ort fp32", "ort int8", "int8 speed-up", "test L1 fp32 -> int8",
                "fd_eval fp32 -> int8", "ops int8 | fp32"):
        table.add_column(col, justify="left" if col in ("model", "ops int8 | fp32") else "right")

    def pair(r: dict[str, Any], metric: str) -> str:
        a, b = (r["heldout_fp32"] or {}).get(metric), (r["heldout_int8"] or {}).get(metric)
        return f"{fmt(a)} -> {fmt(b)}" if a is not None and b is not None else "-"

    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in r["int8_ops"].items()) + " | " + ", ".join(
            f"{k} {v}" for k, v in r["fp32_ops"].items())
        for batch, t in r["latency"].items():
            table.add_row(r["name"], fmt(r["budget"], 3), batch, fmt(t["torch_fp32_ms"]), fmt(t["ort_fp32_ms"]),
                          fmt(t["ort_int8_ms"]), fmt(t["ort_fp32_ms"] / t["ort_int8_ms"], 3), pair(r, "l1"),
                          pair(r, "fd_eval"), ops)
    return table


def main() -> None:
    args = parse_args()
    if args.quick:
        args.repeats, args.warmup, args.budgets = 2, 1, "0.5"
    budgets = [b for b in parse_list(args.budgets) if b < 1.0]
    batches = parse_list(args.batches, int)
    devices = parse_list(args.devices, str) if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    t_start = time.time()
    rows: list[dict[str, Any]] = []
    for which in parse_list(args.model, str):
        cfg = model_config(args, which)
        size = cfg.data.crop_size
        name = f"{cfg.model.net_g}/{cfg.model.ngf}@{size}"
        print(f"[latency] {name}: pruning to budgets {budgets}")
        teacher_ms: dict[tuple[str, int], float] = {}
        teacher_macs = None
        for cand in pruned_generators(cfg, budgets):
            net = cand["net"]
            shape1 = (1, cfg.data.input_nc, size, size)
            cost = {"macs": macs(net, shape1), "macs_published": macs_published(net, shape1), "params": params(net)}
            teacher_macs = teacher_macs or cost["macs"]
            for device in devices:
                for batch in batches:
                    lat = measure_latency(net, (batch, cfg.data.input_nc, size, size), device,
                                          warmup=args.warmup, repeats=args.repeats)
                    key = (device, batch)
                    if cand["budget"] == 1.0:
                        teacher_ms[key] = lat["median_s"]
                    speedup = teacher_ms[key] / lat["median_s"]
                    reduction = teacher_macs / cost["macs"]
                    rows.append({
                        "model": which, "name": name, "net_g": cfg.model.net_g, "ngf": cfg.model.ngf,
                        "image_size": size, "budget": cand["budget"], "keep_ratio": cand["ratio"],
                        "kept_channels": cand["kept"], **cost, "macs_fraction": cost["macs"] / teacher_macs,
                        "device": device, "batch": batch, "latency": lat,
                        "latency_ms": 1e3 * lat["median_s"], "speedup": speedup, "macs_reduction": reduction,
                        "speedup_per_macs_reduction": speedup / reduction,
                    })
                    print(f"  budget {cand['budget']:<6g} {device} batch {batch}: {1e3 * lat['median_s']:.2f} ms")

    table = Table(title="Generator latency vs MACs (uniform candidates; median of repeats)")
    for col in ("model", "budget", "MACs frac", "GMACs", "GMACs (pub.)", "params (M)", "device", "batch",
                "latency (ms)", "speed-up", "MACs reduction", "speed-up / MACs red."):
        table.add_column(col, justify="left" if col in ("model", "device") else "right")
    for r in rows:
        table.add_row(r["name"], fmt(r["budget"], 3), fmt(r["macs_fraction"], 3), fmt(r["macs"] / 1e9),
                      fmt(r["macs_published"] / 1e9), fmt(r["params"] / 1e6), r["device"], str(r["batch"]),
                      fmt(r["latency_ms"]), fmt(r["speedup"], 3), fmt(r["macs_reduction"], 3),
                      fmt(r["speedup_per_macs_reduction"], 3))
    print_table(table)
    q_rows = int8_rows(args, batches) if args.int8 else []
    if q_rows:
        print_table(int8_table(q_rows))
    t_rows = latency_model_rows(args) if args.table else []
    if t_rows:
        print_table(latency_model_table(t_rows))
    write_results(args.out, {
        "benchmark": "latency",
        "config": args.config,
        "overrides": args.overrides,
        "args": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "out")},
        "machine": machine_info(),
        "notes": [
            "weights are random (latency does not depend on their values); no fine-tuning",
            "pruned = the uniform candidate of each budget (ChannelSpace.uniform_ratio), prune_model",
            "latency = median wall time of one eval-mode forward of the whole batch (inference_mode)",
            "speed-up and MACs reduction are relative to the unpruned teacher of the same model",
        ],
        "rows": rows,
        "int8_rows": q_rows,
        "latency_model_rows": t_rows,
        "wall_s": time.time() - t_start,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
