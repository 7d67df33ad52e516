"""FID cost: our Frechet distance vs pytorch-fid's, and a cached vs uncached real-statistics pass.

Part 1 -- the distance itself. :func:`collabprune.metrics.frechet.frechet_distance` (pivoted Cholesky
factor + one symmetric eigenvalue problem) against ``pytorch_fid.fid_score.calculate_frechet_distance``
(``scipy.linalg.sqrtm`` of the non-symmetric product) on the SAME statistics: value, relative
difference and time. Features are synthetic but shaped like Inception pool3 features: ``dims``
(2048) dimensions with a power-law covariance spectrum (eigenvalue i ~ i^-1.2, the decay of real
pool3 features) in a random orthogonal basis, a positive mean; the "fake" set has a slightly
different spectrum and mean. N=3000 gives full-rank covariances, N=200 (< dims, the reward's usual
image count) singular ones -- where pytorch-fid falls back to its diagonal offset or fails.

Part 2 -- the real-statistics cache. :class:`collabprune.metrics.fid.FidScorer` in ``fid`` mode (the
Inception path, so the timing is the real FID cost) on ``--images`` images of the config's crop
size: the first call (Inception load), an uncached real-statistics pass (features + covariance +
cache write), a cached one (read), and one per-candidate score (fake features + distance with the
cached real statistics). Without ``--weights`` (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``)
a random-weight Inception with the same architecture is written to a temporary file
(:func:`make_random_inception_weights`): the timing is the same, the values are meaningless.

    python -m benchmarks.fid [CONFIG] [--set k=v] [--dims 2048] [--sizes 3000,200] [--images N]
                             [--weights pt_inception.pth] [--repeats 3] [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: python benchmarks/fid.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._shared import script_mode_path_fix

    script_mode_path_fix()

import numpy as np
import torch
from rich.table import Table

from benchmarks._shared import base_parser, fmt, load_cfg, machine_info, parse_list, print_table, write_results
from collabprune.config import FidConfig
from benchmarks.random_inception import make_random_inception_weights
from collabprune.metrics.fid import FidScorer
from collabprune.metrics.frechet import feature_stats, frechet_distance


def parse_args() -> Any:
    parser = base_parser("fid", __doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, default=2048, help="feature dimension of part 1")
    parser.add_argument("--sizes", default="3000,200", help="sample counts N of part 1")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of our distance / cached passes")
    parser.add_argument("--pytorch-fid-repeats", type=int, default=1, help="timed repeats of pytorch-fid's distance")
    parser.add_argument("--images", type=int, default=None, help="images of part 2 (default reward.fid.max_images)")
    parser.add_argument("--weights", type=Path, default=None, help="pytorch-fid Inception weights (default: random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: dims 256, sizes 300,100, 8 images, 1 repeat")
    return parser.parse_args()


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    """``fn()``'s last value and the wall time of each of ``repeats`` calls."""
    times, value = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return value, times


def synthetic_features(n: int, dims: int, rng: np.random.Generator, basis: np.ndarray,
                       alpha: float, shift: float) -> np.ndarray:
    """``n`` Gaussian features with eigenvalues ``i^-alpha`` in ``basis`` and mean ``0.3 + shift``."""
    scale = np.arange(1, dims + 1, dtype=np.float64) ** (-alpha / 2)
    z = rng.standard_normal((n, dims)) * scale
    return 0.3 + shift + z @ basis.T


def compare_distances(dims: int, n: int, seed: int, repeats: int, pf_repeats: int) -> dict[str, Any]:
    """Our distance and pytorch-fid's on the same synthetic statistics (values and times)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dims, dims)))
    mu1, s1 = feature_stats(synthetic_features(n, dims, rng, basis, alpha=1.2, shift=0.0))
    mu2, s2 = feature_stats(synthetic_features(n, dims, rng, basis, alpha=1.1, shift=0.02))
    ours, t_ours = timed(lambda: frechet_distance(mu1, s1, mu2, s2), repeats)
    try:
        theirs, t_theirs = timed(lambda: float(calculate_frechet_distance(mu1, s1, mu2, s2)), pf_repeats)
        error = None
    except (ValueError, np.linalg.LinAlgError) as err:  # pytorch-fid's "Imaginary component" failure
        theirs, t_theirs, error = None, [], f"{type(err).__name__}: {err}"
    rel = abs(ours - theirs) / max(abs(theirs), 1e-12) if theirs is not None else None
    return {
        "dims": dims, "n": n, "ours": ours, "pytorch_fid": theirs, "relative_difference": rel,
        "pytorch_fid_error": error, "ours_s": t_ours, "pytorch_fid_s": t_theirs,
        "ours_median_s": float(np.median(t_ours)),
        "pytorch_fid_median_s": float(np.median(t_theirs)) if t_theirs else None,
    }


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` smooth random colour images in [-1, 1] (upsampled 8x8 noise): stand-ins for real ones."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=gen)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return img * 2 - 1


def real_stats_cost(fid_cfg: FidConfig, images: int, size: int, repeats: int, workdir: Path, seed: int) -> dict[str, Any]:
    """Times of FidScorer's first call, uncached and cached real-statistics passes, and one score."""
    scorer = FidScorer(fid_cfg, workdir / "cache_warm", "cpu")
    real = smooth_images(images, size, seed)
    fake = smooth_images(images, size, seed + 1)
    _, t_first = timed(lambda: scorer.real_stats(real[:2], "warm"), 1)  # loads the Inception network
    t_uncached = []
    for i in range(max(1, repeats)):
        scorer.cache_dir = workdir / f"cache_{i}"  # a fresh (empty) cache: a miss
        t_uncached += timed(lambda: scorer.real_stats(real, "bench"), 1)[1]
    _, t_cached = timed(lambda: scorer.real_stats(real, "bench"), repeats)
    value, t_score = timed(lambda: scorer.score(fake, real, "bench"), repeats)
    return {
        "images": images, "image_size": size, "dims": fid_cfg.dims, "batch_size": fid_cfg.batch_size,
        "cache_misses": scorer.cache_misses, "cache_hits": scorer.cache_hits,
        "first_call_incl_load_s": t_first[0], "uncached_s": t_uncached, "cached_s": t_cached,
        "score_with_cached_real_s": t_score, "uncached_median_s": float(np.median(t_uncached)),
        "cached_median_s": float(np.median(t_cached)), "score_median_s": float(np.median(t_score)),
        "score_value": value,
    }


def main() -> None:
    args = parse_args()
    cfg = load_cfg(args.config, args.overrides)
    images = args.images or cfg.reward.fid.max_images
    sizes = parse_list(args.sizes, int)
    if args.quick:
        args.dims, sizes, images, args.repeats = 256, [300, 100], 8, 1
    t_start = time.time()

    distances = []
    for n in sizes:
        print(f"[fid] Frechet distance, dims={args.dims}, N={n} ...")
        distances.append(compare_distances(args.dims, n, args.seed, args.repeats, args.pytorch_fid_repeats))

    with tempfile.TemporaryDirectory(prefix="collabprune_fid_bench_") as tmp:
        workdir = Path(tmp)
        if args.weights is not None:
            weights, kind = args.weights, "pytorch-fid"
        else:
            print("[fid] writing random-weight Inception (timing only) ...")
            weights, kind = make_random_inception_weights(workdir / "inception_random.pth", seed=args.seed), "random"
        fid_cfg = FidConfig(mode="fid", weights=weights, dims=cfg.reward.fid.dims, max_images=images,
                            batch_size=cfg.reward.fid.batch_size)
        print(f"[fid] real-statistics pass, {images} images of {cfg.data.crop_size}px ...")
        cache = real_stats_cost(fid_cfg, images, cfg.data.crop_size, args.repeats, workdir, args.seed)
        cache["weights"] = kind

    table = Table(title="Frechet distance: ours vs pytorch-fid (same statistics)")
    for col in ("dims", "N", "ours", "pytorch-fid", "rel. diff", "ours (s)", "pytorch-fid (s)", "speed-up"):
        table.add_column(col, justify="right")
    for d in distances:
        speedup = d["pytorch_fid_median_s"] / d["ours_median_s"] if d["pytorch_fid_median_s"] else None
        table.add_row(str(d["dims"]), str(d["n"]), fmt(d["ours"], 8),
                      fmt(d["pytorch_fid"], 8) if d["pytorch_fid_error"] is None else d["pytorch_fid_error"][:40],
                      fmt(d["relative_difference"], 3), fmt(d["ours_median_s"], 3),
                      fmt(d["pytorch_fid_median_s"], 3), fmt(speedup, 3))
    print_table(table)
    table = Table(title=f"FidScorer real statistics ({cache['weights']} Inception, {images} images, "
                        f"{cfg.data.crop_size}px, dims {cache['dims']})")
    for col in ("first call (load + 2 images)", "uncached real pass", "cached real pass", "one candidate score",
                "cache speed-up"):
        table.add_column(col, justify="right")
    table.add_row(fmt(cache["first_call_incl_load_s"], 3) + " s", fmt(cache["uncached_median_s"], 3) + " s",
                  fmt(cache["cached_median_s"], 3) + " s", fmt(cache["score_median_s"], 3) + " s",
                  fmt(cache["uncached_median_s"] / max(cache["cached_median_s"], 1e-9), 3) + "x")
    print_table(table)
    write_results(args.out, {
        "benchmark": "fid",
        "config": args.config,
        "overrides": args.overrides,
        "args": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "out")},
        "machine": machine_info(),
        "notes": [
            "part 1 features: Gaussian, eigenvalues i^-1.2 (real) / i^-1.1 (fake) in one random orthogonal "
            "basis, mean 0.3 (+0.02 fake); covariances from collabprune.metrics.frechet.feature_stats",
            "part 2 uses FidScorer(mode=fid) with synthetic smooth images; a random-weight Inception gives "
            "real timings but meaningless values",
        ],
        "frechet_distance": distances,
        "real_stats": cache,
        "wall_s": time.time() - t_start,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
