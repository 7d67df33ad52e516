"""Held-out evaluation: what a user reads to compare methods (DESIGN.md §4.1).

A candidate pair gets the final fine-tuning (``finetune.final_steps``, after pruning and adaptive BN,
the same procedure as in the search) under a seed, then its generator is measured on the TEST split
with metrics that share no weights with the fine-tuning or the reward:

- ``l1``, ``psnr``, ``ssim`` to the ground truth (:mod:`collabprune.metrics.image_quality`; paired
  data only);
- ``fd_eval``: the Frechet distance to the real test targets in the feature space of a network kept
  for evaluation only (:mod:`collabprune.metrics.eval_net`);
- ``fid`` with pytorch-fid's Inception when its weights are present (``reward.fid.mode: fid``), else
  ``None``. ``fd_teacher_d`` is never a held-out metric.

Run it with two or more seeds: the spread over seeds is the noise floor a difference must beat.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from collabprune.config import RunConfig
from collabprune.data import make_dataset, train_split
from collabprune.evaluation import CandidateEvaluator, save_candidate
from collabprune.metrics.eval_net import EvalFeatureNet, fd_eval, load_or_train_eval_net
from collabprune.metrics.fid import FidScorer
from collabprune.metrics.image_quality import paired_scores
from collabprune.metrics.macs import macs, macs_published, params
from collabprune.models import family_of

__all__ = ["HELDOUT_METRICS", "HeldoutEvaluator", "HeldoutResult", "PRIMARY_METRIC", "higher_is_better",
           "primary_metric"]

#: The held-out metrics, in table order, and the one that decides pix2pix comparisons (lower is better).
HELDOUT_METRICS: tuple[str, ...] = ("l1", "psnr", "ssim", "fd_eval", "fid")
PRIMARY_METRIC = "l1"


def primary_metric(cfg: RunConfig) -> str:
    """The held-out metric that decides comparisons for a run config (DESIGN.md §4.1).

    pix2pix: ``l1`` to the ground truth. CycleGAN (unpaired, no ground truth): ``fid`` against the real
    test B images when pytorch-fid's Inception weights are used (``reward.fid.mode: fid``), else
    ``fd_eval``, the Frechet distance in the evaluation-only network's space. All are lower-is-better.
    """
    if family_of(cfg).paired:
        return PRIMARY_METRIC
    return "fid" if cfg.reward.fid.mode == "fid" else "fd_eval"


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a held-out metric is better (PSNR, SSIM) or worse (L1, FD, FID)."""
    return metric in ("psnr", "ssim")


@dataclass(frozen=True)
class HeldoutResult:
    """Test-split metrics of one generator after its final fine-tuning under one seed.

    :param seed: the final fine-tuning seed (``None`` for the teacher, which is not fine-tuned).
    :param steps: final fine-tuning steps (0 for the teacher).
    :param l1: mean absolute error to the ground truth, [-1, 1] units (``None`` when unpaired).
    :param psnr: PSNR in dB on [0, 1] images.
    :param ssim: SSIM (Gaussian window, sigma 1.5).
    :param fd_eval: Frechet distance in the evaluation network's feature space.
    :param fid: FID with pytorch-fid's Inception, or ``None`` without its weights.
    :param g_macs: physical MACs of the generator for one ``crop_size`` image.
    :param g_macs_published: MACs in the GAN-compression papers' convention.
    :param g_params: generator parameters.
    :param g_macs_fraction: ``g_macs`` as a fraction of the teacher's.
    :param d_macs_fraction: the discriminator's MACs fraction.
    :param diverged: the final fine-tuning diverged (the metrics are then ``None``).
    :param seconds: wall time of fine-tuning plus measuring.
    """

    seed: int | None
    steps: int
    l1: float | None
    psnr: float | None
    ssim: float | None
    fd_eval: float | None
    fid: float | None
    g_macs: int
    g_macs_published: int
    g_params: int
    g_macs_fraction: float
    d_macs_fraction: float
    diverged: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeldoutResult":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def metric(self, name: str) -> float | None:
        """The value of a held-out metric by name (one of :data:`HELDOUT_METRICS`)."""
        if name not in HELDOUT_METRICS:
            raise KeyError(f"{name!r} is not a held-out metric ({', '.join(HELDOUT_METRICS)})")
        return getattr(self, name)


class HeldoutEvaluator:
    """Final fine-tuning of candidate pairs and their test-split metrics (DESIGN.md §4.1).

    :param cfg: the run config (``finetune.final_steps`` is the final fine-tuning length).
    :param cache_dir: folder for the evaluation network, FID statistics and the candidates' evaluator
        caches.
    :param candidates: a :class:`CandidateEvaluator` of the same config to reuse (its teacher, data
        and pruning); built when omitted.
    :raises CheckpointError: missing or mismatched teacher checkpoints.
    :raises DatasetError: missing test or train split.
    :raises FidWeightsError: ``reward.fid.mode=fid`` and no Inception weights.
    """

    def __init__(self, cfg: RunConfig, cache_dir: Path | str, candidates: CandidateEvaluator | None = None) -> None:
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.candidates = candidates or CandidateEvaluator(cfg, self.cache_dir / "evaluator")
        self.device = self.candidates.device
        test = make_dataset(cfg.data, "test", train=False)
        items = [test[i] for i in range(len(test))]
        self.test_a = torch.stack([it["A"] for it in items])
        self.test_b = torch.stack([it["B"] for it in items])
        self.paired = family_of(cfg).paired
        train = train_split(cfg.data, train=False)
        targets = torch.stack([train[i]["B"] for i in range(len(train))])
        self.eval_net: EvalFeatureNet = load_or_train_eval_net(targets, self.cache_dir / "eval_net")
        self.fid: FidScorer | None = None
        if cfg.reward.fid.mode == "fid":
            self.fid = FidScorer(cfg.reward.fid.model_copy(update={"max_images": len(self.test_b)}),
                                 self.cache_dir / "fid_stats", self.device)

    @torch.no_grad()
    def outputs(self, net_g: nn.Module, batch_size: int = 16) -> torch.Tensor:
        """The generator's test-split outputs (N, C_out, H, W) on the CPU, eval mode."""
        net_g.eval()
        parts = [net_g(self.test_a[i:i + batch_size].to(self.device)).cpu() for i in range(0, len(self.test_a), batch_size)]
        return torch.cat(parts)

    def measure(self, net_g: nn.Module) -> dict[str, float | None]:
        """The held-out metrics of a generator as it is (no training).

        :param net_g: (B, C_in, H, W) -> (B, C_out, H, W) in [-1, 1].
        :returns: ``{"l1", "psnr", "ssim", "fd_eval", "fid"}`` (``None`` where not applicable).
        :raises ValueError: the outputs hold NaN/inf.
        """
        return self.measure_outputs(self.outputs(net_g))

    def measure_outputs(self, fake: torch.Tensor) -> dict[str, float | None]:
        """The held-out metrics of a generator's test-split outputs (:meth:`outputs`).

        :param fake: (N, C_out, H, W) in [-1, 1], one per test image, in test order.
        :returns: ``{"l1", "psnr", "ssim", "fd_eval", "fid"}`` (``None`` where not applicable).
        :raises ValueError: the outputs hold NaN/inf.
        """
        out: dict[str, float | None] = {"l1": None, "psnr": None, "ssim": None}
        if self.paired:
            out.update({k: v for k, v in paired_scores(fake, self.test_b).to_dict().items() if k != "images"})
        out["fd_eval"] = fd_eval(self.eval_net, fake, self.test_b)
        out["fid"] = self.fid.score(fake, self.test_b, "test_split") if self.fid is not None else None
        return out

    def teacher(self) -> HeldoutResult:
        """The teacher generator's held-out metrics (no fine-tuning)."""
        t0 = time.perf_counter()
        net_g = self.candidates.teacher_g
        g_macs = macs(net_g, self.candidates.g_shape)
        return HeldoutResult(seed=None, steps=0, **self.measure(net_g), g_macs=g_macs,
                             g_macs_published=macs_published(net_g, self.candidates.g_shape), g_params=params(net_g),
                             g_macs_fraction=1.0, d_macs_fraction=1.0, seconds=time.perf_counter() - t0)

    def evaluate(self, g_ratios: Sequence[float], d_ratios: Sequence[float], seed: int,
                 save_dir: Path | None = None) -> HeldoutResult:
        """Prune, recalibrate BatchNorm, fine-tune for ``finetune.final_steps`` and measure on the test split.

        :param g_ratios: keep ratio per generator group.
        :param d_ratios: keep ratio per discriminator group.
        :param seed: the final fine-tuning seed.
        :param save_dir: when given, the fine-tuned pair is written there (specs + state dicts).
        :returns: the result; a diverged fine-tuning gives ``diverged=True`` and no metrics.
        """
        t0 = time.perf_counter()
        cand = self.candidates
        pair = cand.train_pair(g_ratios, d_ratios, seed, self.cfg.finetune.final_steps)
        g_macs = macs(pair.net_g, cand.g_shape)
        costs = dict(g_macs=g_macs, g_macs_published=macs_published(pair.net_g, cand.g_shape),
                     g_params=params(pair.net_g), g_macs_fraction=g_macs / cand.g_space.teacher_macs,
                     d_macs_fraction=macs(pair.net_d, cand.d_shape) / cand.d_space.teacher_macs)
        metrics: dict[str, float | None] = {name: None for name in HELDOUT_METRICS}
        diverged = pair.finetune.diverged
        if not diverged:
            try:
                metrics = self.measure(pair.net_g)
            except ValueError:
                diverged = True
        if save_dir is not None and not diverged:
            save_candidate(Path(save_dir), pair.net_g, pair.g_spec, pair.net_d, pair.d_spec)
        return HeldoutResult(seed=seed, steps=self.cfg.finetune.final_steps, **metrics, **costs,
                             diverged=diverged, seconds=time.perf_counter() - t0)
