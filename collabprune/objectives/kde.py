"""Local-density-preservation objective (DESIGN.md §4, "Local-density preservation (KDE)").

For each centre input x_b (b = 1..B) draw K perturbations x_bk; the teacher's neighbourhood is
T_b = {phi(G_t(x_bk))}_k and the pruned generator's is S_b = {phi(G_s(x_bk))}_k. With Gaussian kernel
density estimates p_b (over T_b) and q_b (over S_b), both with bandwidth h_b = median pairwise distance
in T_b,

    ∫ (p_b - q_b)^2 = C_b [ mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) - 2 mean_ij k(t_i, s_j) ],
    k(a, b) = exp(-|a - b|^2 / (4 h_b^2)),   C_b = (4 pi h_b^2)^(-d/2),

because the convolution of two N(., h^2 I) kernels is N(., 2 h^2 I). The bracket is the biased
(V-statistic, i = j included) Gaussian-kernel MMD^2 with bandwidth sqrt(2) h_b. ``C_b`` under/overflows
for d in the hundreds, so by default it is dropped: ``L_kde = mean_b MMD^2_b``, a scale-free number in
[0, 2], 0 when S_b = T_b, differentiable in the student's features.

:func:`kde_loss` applies it to a (student, teacher) generator pair: neighbourhoods of a batch of
centres through both networks (dropout on, same draws), features by :func:`make_feature_map`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from collabprune.config import RunConfig

__all__ = [
    "FeatureMap",
    "dropout_on",
    "kde_loss",
    "kde_objective",
    "make_feature_map",
    "neighbourhood_outputs",
    "make_neighbourhoods",
    "median_bandwidth",
    "pixel_features",
    "teacher_d_features",
]

_EPS_BANDWIDTH = 1e-6


def make_neighbourhoods(
    x: torch.Tensor, k: int, noise_std: float, jitter: int, generator: torch.Generator
) -> torch.Tensor:
    """K random perturbations of each centre input (Gaussian noise + small random shift).

    Row ``b * k + j`` of the result is perturbation ``j`` of centre ``b``. Each perturbation is the
    centre shifted by a random integer offset ``(dy, dx)`` in ``[-jitter, jitter]^2`` (replicate-pad
    then crop, so no wrap-around), plus N(0, noise_std^2) noise, clamped to [-1, 1]. Feed the same
    tensor to the teacher and the student so both see the same perturbations.

    :param x: centres ``(B, C, H, W)`` in [-1, 1].
    :param k: perturbations per centre (K >= 1).
    :param noise_std: standard deviation of the noise, in [-1, 1] image units (>= 0).
    :param jitter: largest shift in pixels (>= 0).
    :param generator: the random generator (CPU or on ``x``'s device); same seed -> same output.
    :returns: ``(B * K, C, H, W)`` on ``x``'s device and dtype.
    :raises ValueError: for ``k < 1``, negative ``noise_std``/``jitter`` or a non-4-D ``x``.
    """
    if x.ndim != 4:
        raise ValueError(f"make_neighbourhoods: expected x of shape (B, C, H, W), got {tuple(x.shape)}")
    if k < 1 or noise_std < 0 or jitter < 0:
        raise ValueError(f"make_neighbourhoods: need k >= 1, noise_std >= 0, jitter >= 0 (got {k}, {noise_std}, {jitter})")
    b, c, h, w = x.shape
    rep = x.repeat_interleave(k, dim=0)  # (B*K, C, H, W), row b*K + j
    gdev = generator.device
    if jitter > 0:
        shifts = torch.randint(-jitter, jitter + 1, (b * k, 2), generator=generator, device=gdev).tolist()
        padded = F.pad(rep, (jitter, jitter, jitter, jitter), mode="replicate")
        rep = torch.stack(
            [padded[i, :, jitter + dy : jitter + dy + h, jitter + dx : jitter + dx + w] for i, (dy, dx) in enumerate(shifts)]
        )
    if noise_std > 0:
        noise = torch.randn(rep.shape, generator=generator, device=gdev, dtype=torch.float32)
        rep = rep + noise_std * noise.to(device=rep.device, dtype=rep.dtype)
    return rep.clamp(-1.0, 1.0)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``(B, K, K')`` of ``a (B, K, d)``, ``b (B, K', d)``.

    Computed from explicit differences (exact, >= 0, finite gradients at zero distance).
    """
    return (a.unsqueeze(2) - b.unsqueeze(1)).pow(2).sum(-1)


def median_bandwidth(t: torch.Tensor) -> torch.Tensor:
    """Median pairwise (i < j) Euclidean distance within each teacher neighbourhood.

    :param t: teacher features ``(B, K, d)``, K >= 2.
    :returns: ``(B,)`` bandwidths h_b (detached; at least 1e-6 so a collapsed neighbourhood does not
        divide by zero). Median of an even count = mean of the two middle values.
    :raises ValueError: when ``t`` is not 3-D or K < 2.
    """
    if t.ndim != 3 or t.shape[1] < 2:
        raise ValueError(f"median_bandwidth: expected (B, K>=2, d), got {tuple(t.shape)}")
    t = t.detach()
    kk = t.shape[1]
    d2 = _sq_dists(t, t)
    iu = torch.triu_indices(kk, kk, offset=1, device=t.device)
    pair = d2[:, iu[0], iu[1]].clamp_min(0).sqrt()  # (B, K(K-1)/2)
    h = torch.quantile(pair.double(), 0.5, dim=1).to(t.dtype)
    return h.clamp_min(_EPS_BANDWIDTH)


def kde_objective(
    t_feats: torch.Tensor,
    s_feats: torch.Tensor,
    bandwidth: torch.Tensor | None = None,
    keep_constant: bool = False,
) -> torch.Tensor:
    """L_kde: mean over centres of the integrated squared difference of teacher/student KDEs.

    ``L_kde = mean_b C_b * [mean k(T_b, T_b) + mean k(S_b, S_b) - 2 mean k(T_b, S_b)]`` with
    ``k(a, b) = exp(-|a - b|^2 / (4 h_b^2))`` (biased V-statistic, i = j terms included, so with the
    constant it equals ``∫ (p_b - q_b)^2`` exactly) and ``C_b = (4 pi h_b^2)^(-d/2)`` only when
    ``keep_constant`` (DESIGN.md §4). Without the constant the value lies in [0, 2] and is exactly
    0 when ``s_feats == t_feats``.

    :param t_feats: teacher features ``(B, K, d)`` (treated as constants: detached).
    :param s_feats: student features ``(B, K, d)``; the result is differentiable w.r.t. them.
    :param bandwidth: ``(B,)`` kernel bandwidths h_b; default :func:`median_bandwidth` of ``t_feats``.
    :param keep_constant: multiply by ``(4 pi h_b^2)^(-d/2)`` (only sensible for small d: tests).
    :returns: scalar tensor (dtype of ``s_feats``).
    :raises ValueError: when the shapes differ or are not ``(B, K, d)``.
    """
    if t_feats.ndim != 3 or t_feats.shape != s_feats.shape:
        raise ValueError(
            f"kde_objective: expected teacher and student features of equal shape (B, K, d), "
            f"got {tuple(t_feats.shape)} and {tuple(s_feats.shape)}"
        )
    t = t_feats.detach().to(s_feats.dtype)
    h = median_bandwidth(t) if bandwidth is None else bandwidth.detach().to(s_feats.dtype)
    if h.shape != (t.shape[0],):
        raise ValueError(f"kde_objective: bandwidth must have shape ({t.shape[0]},), got {tuple(h.shape)}")
    scale = (4.0 * h * h).view(-1, 1, 1)
    k_tt = torch.exp(-_sq_dists(t, t) / scale).mean(dim=(1, 2))
    k_ss = torch.exp(-_sq_dists(s_feats, s_feats) / scale).mean(dim=(1, 2))
    k_ts = torch.exp(-_sq_dists(t, s_feats) / scale).mean(dim=(1, 2))
    mmd2 = k_tt + k_ss - 2.0 * k_ts
    if keep_constant:
        d = t.shape[2]
        log_c = -0.5 * d * torch.log(4.0 * math.pi * h * h)
        mmd2 = mmd2 * torch.exp(log_c)
    return mmd2.mean()


def pixel_features(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Pixel feature map phi: adaptive average pool to ``size x size``, flattened.

    :param images: ``(N, C, H, W)`` in [-1, 1].
    :param size: side of the pooled grid.
    :returns: ``(N, C * size * size)``, differentiable.
    """
    return F.adaptive_avg_pool2d(images, (size, size)).flatten(1)


def teacher_d_features(
    d_model: nn.Module, inputs: torch.Tensor | None, outputs: torch.Tensor
) -> torch.Tensor:
    """The teacher discriminator's penultimate features, spatially averaged (the default phi).

    Runs every layer of ``d_model.model`` (an ``nn.Sequential``, as in upstream's
    ``NLayerDiscriminator``) except the last one, the 1-channel ``Conv2d`` head, on
    ``cat(inputs, outputs)`` along channels (pix2pix's conditional D) or on ``outputs`` alone when
    ``inputs`` is None (CycleGAN's D), then averages over space. Gradients flow to ``outputs``; the
    caller freezes D (``requires_grad_(False)``) and chooses its mode (``eval()`` recommended).

    :param d_model: a module with a ``.model`` ``nn.Sequential`` whose last element is the head.
    :param inputs: ``(N, C_in, H, W)`` conditioning inputs, or None.
    :param outputs: ``(N, C_out, H, W)`` generated or real images in [-1, 1].
    :returns: ``(N, C)`` features, C = the head's input channels (``ndf * min(2^n_layers, 8)``).
    :raises ValueError: when ``d_model`` has no such ``.model`` or its last layer is not a
        1-output-channel Conv2d.
    """
    seq = getattr(d_model, "model", None)
    if not isinstance(seq, nn.Sequential) or len(seq) < 2:
        raise ValueError("teacher_d_features: d_model must have a .model nn.Sequential (NLayerDiscriminator)")
    head = seq[-1]
    if not isinstance(head, nn.Conv2d) or head.out_channels != 1:
        raise ValueError(f"teacher_d_features: last layer of d_model.model must be a 1-channel Conv2d, got {head}")
    x = outputs if inputs is None else torch.cat([inputs, outputs], dim=1)
    for layer in list(seq)[:-1]:
        x = layer(x)
    return x.mean(dim=(2, 3))


# ------------------------------------------------ L_kde of a (student, teacher) generator pair
FeatureMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def dropout_on(net: nn.Module) -> Iterator[nn.Module]:
    """Run ``net`` with its Dropout layers active and everything else (BatchNorm) as it is.

    pix2pix keeps dropout on at test time (DESIGN.md §4: part of the neighbourhood's randomness).
    """
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    flags = [m.training for m in drops]
    for m in drops:
        m.train(True)
    try:
        yield net
    finally:
        for m, flag in zip(drops, flags):
            m.train(flag)


def neighbourhood_outputs(net: nn.Module, x_nb: torch.Tensor, seed: int) -> torch.Tensor:
    """G outputs on a neighbourhood batch with dropout on, under a fixed RNG seed.

    The same ``seed`` for teacher and student gives the same dropout draws where the shapes agree,
    so a student identical to the teacher has L_kde exactly 0.

    :param x_nb: perturbed inputs (B*K, C, H, W) from :func:`make_neighbourhoods`.
    :returns: (B*K, C_out, H, W).
    """
    devices = [x_nb.device] if x_nb.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with dropout_on(net):
            return net(x_nb)


def make_feature_map(cfg: "RunConfig", teacher_d: nn.Module, inception: nn.Module | None = None) -> FeatureMap:
    """phi(inputs, outputs) -> (N, d) features of ``reward.kde.features`` (DESIGN.md §4).

    ``teacher_d``: the frozen teacher D's penultimate features of cat(input, output) (of the output
    alone for CycleGAN's unconditional D_B), spatially averaged; ``pixels``: 16x16 average-pooled pixels; ``inception``: the FID Inception's pool
    features (``inception`` must be given). Differentiable w.r.t. ``outputs``.

    :raises ValueError: ``inception`` features without an Inception network.
    """
    kind = cfg.reward.kde.features
    if kind == "teacher_d":
        from collabprune.models.family import family_of

        if not family_of(cfg).conditional_d:  # CycleGAN's D sees a B image alone
            return lambda inputs, outputs: teacher_d_features(teacher_d, None, outputs)
        return lambda inputs, outputs: teacher_d_features(teacher_d, inputs, outputs)
    if kind == "pixels":
        return lambda inputs, outputs: pixel_features(outputs)
    if inception is None:
        raise ValueError("reward.kde.features=inception needs the FID Inception network")
    return lambda inputs, outputs: inception(outputs)


def kde_loss(
    student: nn.Module,
    teacher: nn.Module,
    phi: FeatureMap,
    centres: torch.Tensor,
    cfg: "RunConfig",
    seed: int,
) -> torch.Tensor:
    """L_kde of DESIGN.md §4 for a batch of centre inputs (differentiable w.r.t. the student).

    :param centres: inputs x_b (B, C, H, W) in [-1, 1].
    :param seed: seeds the perturbations and the dropout draws (same for teacher and student).
    :returns: scalar tensor in [0, 2].
    """
    kc = cfg.reward.kde
    gen = torch.Generator(device=centres.device).manual_seed(seed)
    x_nb = make_neighbourhoods(centres, kc.neighbours, kc.noise_std, kc.jitter, gen)
    with torch.no_grad():
        t_out = neighbourhood_outputs(teacher, x_nb, seed)
        t_feats = phi(x_nb, t_out)
    s_feats = phi(x_nb, neighbourhood_outputs(student, x_nb, seed))
    b = centres.shape[0]
    return kde_objective(t_feats.reshape(b, kc.neighbours, -1), s_feats.reshape(b, kc.neighbours, -1))
