"""A random-weight stand-in for pytorch-fid's Inception weights: for tests and offline benchmarks only.

Downloads fail on machines without internet; the real loading code (:mod:`collabprune.metrics.inception`)
is then exercised on this file, which has exactly the keys and shapes of
``pt_inception-2015-12-05-6726825d.pth``. Its features vary across images but mean nothing: never use
it for real scores.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from collabprune.io import atomic_path
from collabprune.metrics.inception import pytorch_fid_patched

__all__ = ["make_random_inception_weights"]


def _fid_inception_arch() -> nn.Module:
    """Randomly initialised torchvision Inception3 with the FID blocks, exactly as
    ``pytorch_fid.inception.fid_inception_v3`` builds it (same keys), but without loading weights."""
    import pytorch_fid.inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def _structured_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` smooth random colour images in [0, 1]: upsampled low-res noise plus a random ramp."""
    low = torch.rand(n, 3, 6, 6, generator=generator)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size) * torch.rand(n, 3, 1, 1, generator=generator)
    fine = 0.15 * torch.rand(n, 3, size, size, generator=generator)
    return (0.6 * img + 0.4 * ramp + fine).clamp(0, 1)


def make_random_inception_weights(
    path: Path | str, seed: int = 0, calib_images: torch.Tensor | None = None
) -> Path:
    """Write a random-weight stand-in for pytorch-fid's Inception weights (tests, offline demos).

    The state dict has exactly the keys and shapes of ``pt_inception-2015-12-05-6726825d.pth``.
    Random conv weights with default BatchNorm statistics (mean 0, var 1) shrink activations layer
    by layer until pool3 is all zeros, so the BatchNorm running statistics are recalibrated: the
    calibration images are run through the network in train mode with ``momentum=None`` (cumulative
    average), then the features are checked to vary across images. Never use it for real scores.

    :param path: output ``.pth`` file (written atomically).
    :param seed: seed of the weights and the default calibration images.
    :param calib_images: ``(N, 3, H, W)`` in [-1, 1], N >= 2; default 6 smooth random 64x64 images
        (resized to 299x299 inside, like every input).
    :returns: ``path``.
    :raises RuntimeError: when the calibrated features are still degenerate.
    """
    import pytorch_fid.inception as pfi

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        arch = _fid_inception_arch()
    if calib_images is None:
        x01 = _structured_images(6, 64, gen)
    else:
        x01 = ((calib_images.detach().float().cpu() + 1) * 0.5).clamp(0, 1)
    with pytorch_fid_patched("fid_inception_v3", lambda: arch):
        wrapper = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    for m in wrapper.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    wrapper.train()
    with torch.no_grad():
        # One train-mode pass: with momentum=None the running statistics become this batch's
        # statistics, so the train-mode output equals the eval-mode output (up to the unbiased
        # variance factor n/(n-1)) and serves as the degeneracy check without a second pass.
        feats = wrapper(x01)[0].flatten(1)
    wrapper.eval()
    for m in wrapper.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    if not torch.isfinite(feats).all() or float(feats.var(dim=0).max()) <= 0.0:
        raise RuntimeError("random Inception weights give degenerate features after BN calibration")
    state = {k: v.detach().clone() for k, v in arch.state_dict().items()}
    out = Path(path)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out
