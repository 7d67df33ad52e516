"""FID with pytorch-fid's Inception, its offline fallback ``fd_teacher_d``, and cached real statistics.

DESIGN.md §4: FID is computed with pytorch-fid's FID Inception (2048-d pool3 features by default)
between the pruned generator's outputs and the real targets of the held-out split. Real-image
statistics are computed once per (content, size, weights, dims) and cached on disk. The Inception
weights are looked up in order: the config path (``reward.fid.weights``), the environment variable
``COLLABPRUNE_FID_WEIGHTS``, the torch hub cache, then a download with a network timeout. Offline with
no weights, :class:`~collabprune.errors.FidWeightsError` is raised, unless the config chooses the
documented fallback ``reward.fid.mode=fd_teacher_d``: the Frechet distance in the frozen teacher
discriminator's feature space, labelled ``fd_teacher_d`` (never ``fid``).

Image convention: every image tensor handed to this module is ``(N, C, H, W)`` float in ``[-1, 1]``
(the range of our tanh generators); it is converted to the ``[0, 1]`` input pytorch-fid's
``InceptionV3(normalize_input=True)`` expects.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from collabprune.config import FidConfig
from collabprune.errors import FidWeightsError
from collabprune.io import atomic_path, file_sha256

__all__ = [
    "FID_WEIGHTS_ENV",
    "FID_WEIGHTS_FILENAME",
    "FeatureFn",
    "FidScorer",
    "default_fid_weights_url",
    "feature_stats",
    "frechet_distance",
    "hub_cache_weights_path",
    "inception_features",
    "load_inception",
    "make_random_inception_weights",
    "real_stats",
    "resolve_inception_weights",
]

#: Environment variable naming a local copy of pytorch-fid's Inception weights.
FID_WEIGHTS_ENV = "COLLABPRUNE_FID_WEIGHTS"
#: File name pytorch-fid (via ``torch.hub``) gives the weights in the hub cache.
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"

#: A feature extractor for Frechet distances: images ``(N, C, H, W)`` in [-1, 1] -> features ``(N, d)``.
FeatureFn = Callable[[torch.Tensor], torch.Tensor]

_PATCH_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """A factor ``F (d, r)`` with ``sigma = F F^T`` for a symmetric PSD ``sigma`` (float64).

    LAPACK's pivoted Cholesky (``dpstrf``, default tolerance ``d * eps * max(diag)``) stops at the
    numerical rank r, so a singular covariance (fewer samples than dims) gives a thin factor; if it
    fails for another reason, ``V_+ sqrt(Lambda_+)`` from ``eigh`` (non-positive eigenvalues, i.e.
    rounding noise, dropped) is used instead.
    """
    from scipy.linalg import lapack

    c, piv, rank, info = lapack.dpstrf(sigma, lower=1)
    if info >= 0 and rank > 0 and np.isfinite(c).all():
        factor = np.empty((sigma.shape[0], rank))
        factor[piv - 1] = np.tril(c)[:, :rank]
        return factor
    vals, vecs = np.linalg.eigh(sigma)
    keep = vals > 0
    return vecs[:, keep] * np.sqrt(vals[keep])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` -- the FID formula of Heusel et
    al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
    NeurIPS 2017 (eq. 6), i.e. the Frechet/2-Wasserstein distance of Dowson & Landau (1982).

    Numerics, compared with ``pytorch_fid.fid_score.calculate_frechet_distance``: pytorch-fid takes
    ``scipy.linalg.sqrtm`` of the non-symmetric product ``S1 S2`` (a complex Schur decomposition,
    30-100 s at 2048 dims on 2 CPU cores), drops a small imaginary part and, when the result is not
    finite, retries with ``1e-6`` added to both diagonals. Here everything is float64 and symmetric:
    with any factor ``S1 = F F^T``, ``S1 S2`` has the same non-zero eigenvalues as the symmetric PSD
    ``F^T S2 F``, so ``tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(F^T S2 F))`` -- one symmetric
    eigenvalue problem (``eigvalsh``), tiny negative eigenvalues from rounding clipped to 0. ``F`` is
    a pivoted Cholesky factor (``F = S1^(1/2)`` gives the same spectrum) of whichever covariance has
    the lower numerical rank, so with N < d samples the eigenproblem is only N x N. For PSD inputs both
    implementations give the same number (relative difference <= 1e-7 in our tests); this one never
    goes complex and needs no diagonal offset.

    :param mu1: mean feature vector, shape ``(d,)``.
    :param sigma1: feature covariance, shape ``(d, d)``, symmetric PSD.
    :param mu2: mean feature vector, shape ``(d,)``.
    :param sigma2: feature covariance, shape ``(d, d)``, symmetric PSD.
    :returns: the squared Frechet distance (a float >= 0 up to rounding; in the features' units
        squared).
    :raises ValueError: when the shapes disagree or an input is not finite.
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if m1.ndim != 1 or m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.shape[0],) * 2:
        raise ValueError(
            f"frechet_distance: shape mismatch mu1{m1.shape} mu2{m2.shape} "
            f"sigma1{s1.shape} sigma2{s2.shape}"
        )
    for name, arr in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"frechet_distance: {name} has non-finite entries")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    f1, f2 = _psd_factor(s1), _psd_factor(s2)
    factor, other = (f1, s2) if f1.shape[1] <= f2.shape[1] else (f2, s1)
    inner = factor.T @ other @ factor
    inner = 0.5 * (inner + inner.T)
    eig = torch.linalg.eigvalsh(torch.from_numpy(inner)).clamp_min(0.0)
    tr_covmean = float(eig.sqrt().sum())
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature matrix, as pytorch-fid computes them.

    :param feats: features, shape ``(N, d)``, N >= 2.
    :returns: ``(mu, sigma)`` in float64, shapes ``(d,)`` and ``(d, d)`` (unbiased covariance,
        ``np.cov(feats, rowvar=False)``).
    :raises ValueError: when ``feats`` is not 2-D, has fewer than 2 rows or non-finite entries.
    """
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"feature_stats: expected features of shape (N>=2, d), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("feature_stats: features have non-finite entries")
    mu = arr.mean(axis=0)
    sigma = np.atleast_2d(np.cov(arr, rowvar=False))
    return mu, sigma


# --------------------------------------------------------------------------------------------------
# Inception weights resolution
# --------------------------------------------------------------------------------------------------


def default_fid_weights_url() -> str:
    """pytorch-fid's URL of the FID Inception weights (``pytorch_fid.inception.FID_WEIGHTS_URL``)."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return str(FID_WEIGHTS_URL)


def hub_cache_weights_path() -> Path:
    """Where ``torch.hub`` (and so pytorch-fid) caches the weights: ``<hub dir>/checkpoints/<file>``.

    The hub dir is ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def _download(url: str, dest: Path, timeout_s: float) -> None:
    """Download ``url`` to ``dest`` (temporary file, then rename), with a socket timeout.

    Checks the SHA-256 prefix that ``torch.hub`` file names carry (``-<hex>.``), when present.

    :raises OSError: (``urllib.error.URLError``, ``socket.timeout``, ...) on network failure.
    :raises ValueError: when the downloaded file's hash does not match the name's prefix.
    """
    match = re.search(r"-([a-f0-9]+)\.", dest.name)
    with atomic_path(dest) as tmp:
        sha = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(tmp, "wb") as fh:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                sha.update(chunk)
                fh.write(chunk)
        if match and not sha.hexdigest().startswith(match.group(1)):
            raise ValueError(
                f"downloaded {url} has sha256 {sha.hexdigest()[:12]}..., expected prefix {match.group(1)}"
            )


def resolve_inception_weights(path: Path | str | None, timeout_s: float = 20.0) -> Path:
    """Find pytorch-fid's FID Inception weights file (DESIGN.md §4).

    Order: (1) ``path`` (the config field ``reward.fid.weights``), (2) the environment variable
    ``COLLABPRUNE_FID_WEIGHTS``, (3) the torch hub cache (:func:`hub_cache_weights_path`), (4) a
    download of ``pytorch_fid.inception.FID_WEIGHTS_URL`` into the hub cache with a network timeout.
    A path given in (1) or (2) that does not exist is an error (it is not silently skipped).

    :param path: explicit weights file, or ``None``.
    :param timeout_s: network timeout of the download, seconds.
    :returns: the path of an existing weights file.
    :raises FidWeightsError: a one-line message naming where it looked, with a hint (set
        ``COLLABPRUNE_FID_WEIGHTS`` or ``reward.fid.mode=fd_teacher_d``).
    """
    hint = (
        f"put {FID_WEIGHTS_FILENAME} on this machine and set {FID_WEIGHTS_ENV}=/path/to/it "
        "(or reward.fid.weights), or use reward.fid.mode=fd_teacher_d"
    )
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        raise FidWeightsError(f"reward.fid.weights: Inception weights file not found: {p}", hint=hint)
    env = os.environ.get(FID_WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        raise FidWeightsError(f"{FID_WEIGHTS_ENV}={env}: Inception weights file not found", hint=hint)
    cached = hub_cache_weights_path()
    if cached.is_file():
        return cached
    url = default_fid_weights_url()
    try:
        _download(url, cached, timeout_s)
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, timeouts: OSError
        reason = " ".join(str(getattr(err, "reason", err)).split()) or type(err).__name__
        raise FidWeightsError(
            f"FID Inception weights not found (looked at reward.fid.weights: unset, {FID_WEIGHTS_ENV}: "
            f"unset, torch hub cache: {cached}) and download of {url} failed "
            f"(timeout {timeout_s:g} s): {reason}",
            hint=hint,
        ) from None
    return cached


# --------------------------------------------------------------------------------------------------
# Inception network
# --------------------------------------------------------------------------------------------------


@contextmanager
def _pytorch_fid_patched(name: str, value: Any) -> Iterator[None]:
    """Temporarily replace a global of ``pytorch_fid.inception`` (serialised by a lock)."""
    import pytorch_fid.inception as pfi

    with _PATCH_LOCK:
        original = getattr(pfi, name)
        setattr(pfi, name, value)
        try:
            yield
        finally:
            setattr(pfi, name, original)


class _FidInception(nn.Module):
    """pytorch-fid's ``InceptionV3`` behind our image convention: ``[-1, 1]`` in, ``(N, dims)`` out."""

    def __init__(self, net: nn.Module, dims: int) -> None:
        super().__init__()
        self.net = net
        self.dims = dims

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """:param images: ``(N, C, H, W)`` in [-1, 1], C in {1, 3}. :returns: ``(N, dims)``."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (N, 1|3, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = ((images.float() + 1.0) * 0.5).clamp(0.0, 1.0)  # pytorch-fid expects [0, 1]
        out = self.net(x)[0]
        if out.shape[2] != 1 or out.shape[3] != 1:
            out = torch.nn.functional.adaptive_avg_pool2d(out, (1, 1))
        return out.flatten(1)


def _block_index(dims: int) -> int:
    from pytorch_fid.inception import InceptionV3

    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        raise ValueError(f"dims={dims}: allowed {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}")
    return int(InceptionV3.BLOCK_INDEX_BY_DIM[dims])


def load_inception(
    weights_path: Path | str, dims: int = 2048, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build pytorch-fid's FID Inception from a local weights file, without any download.

    The network is ``pytorch_fid.inception.InceptionV3([block], resize_input=True,
    normalize_input=True, use_fid_inception=True)``, built by pytorch-fid's own code with its weight
    loader redirected to ``torch.load(weights_path, weights_only=True)`` (strict key match). The
    returned module is frozen and in eval mode; it maps images ``(N, C, H, W)`` in [-1, 1]
    (converted to pytorch-fid's [0, 1], resized to 299x299 inside) to features ``(N, dims)``.

    :param weights_path: the ``pt_inception-2015-12-05-6726825d.pth`` file (or a same-keyed file).
    :param dims: feature dimension: 64, 192, 768 or 2048 (pool3, the FID default).
    :param device: where to put the network.
    :raises FidWeightsError: when the file cannot be read or its keys/shapes do not match.
    :raises ValueError: for an unsupported ``dims``.
    """
    from pytorch_fid.inception import InceptionV3

    block = _block_index(dims)
    try:
        state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise FidWeightsError(
            f"{weights_path}: cannot read Inception weights ({type(err).__name__})",
            hint=f"point {FID_WEIGHTS_ENV} at pytorch-fid's {FID_WEIGHTS_FILENAME}",
        ) from None
    if not isinstance(state, Mapping):
        raise FidWeightsError(f"{weights_path}: not a state dict")
    try:
        with _pytorch_fid_patched("load_state_dict_from_url", lambda *a, **k: state):
            net = InceptionV3(
                [block],
                resize_input=True,
                normalize_input=True,
                requires_grad=False,
                use_fid_inception=True,
            )
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FidWeightsError(
            f"{weights_path}: keys/shapes do not match pytorch-fid's FID Inception: {first}",
            hint=f"use pytorch-fid's {FID_WEIGHTS_FILENAME}",
        ) from None
    model = _FidInception(net, dims).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def inception_features(
    model: nn.Module | FeatureFn, images: torch.Tensor, batch_size: int = 16
) -> np.ndarray:
    """Features of ``images`` in batches.

    :param model: a module from :func:`load_inception` (or any callable images -> ``(n, d)``).
    :param images: ``(N, C, H, W)`` float in [-1, 1] (any device; batches move to the model's
        device).
    :param batch_size: images per forward pass.
    :returns: float64 array ``(N, d)``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    device: torch.device | None = None
    if isinstance(model, nn.Module):
        first = next(model.parameters(), None)
        device = first.device if first is not None else None
    out: list[np.ndarray] = []
    for start in range(0, images.shape[0], max(1, batch_size)):
        batch = images[start : start + batch_size]
        if device is not None:
            batch = batch.to(device)
        feats = model(batch)
        out.append(feats.detach().double().cpu().reshape(batch.shape[0], -1).numpy())
    if not out:
        raise ValueError("inception_features: no images")
    return np.concatenate(out, axis=0)


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
    with _pytorch_fid_patched("fid_inception_v3", lambda: arch):
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


# --------------------------------------------------------------------------------------------------
# Real-image statistics cache
# --------------------------------------------------------------------------------------------------


def _as_batches(images: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return [images]
    batches = [b if b.ndim == 4 else b.unsqueeze(0) for b in images]
    if not batches:
        raise ValueError("real_stats: no real images")
    return batches


def _content_digest(batches: Sequence[torch.Tensor], key_parts: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    sha = hashlib.sha256()
    n = 0
    shape: tuple[int, ...] | None = None
    dtype = None
    for b in batches:
        arr = b.detach().cpu().contiguous()
        if shape is None:
            shape, dtype = tuple(arr.shape[1:]), str(arr.dtype)
        elif tuple(arr.shape[1:]) != shape:
            raise ValueError(f"real_stats: image shape {tuple(arr.shape[1:])} differs from {shape}")
        sha.update(arr.numpy().tobytes())
        n += arr.shape[0]
    meta = {
        "content_sha256": sha.hexdigest(),
        "n_images": n,
        "image_shape": list(shape or ()),
        "dtype": dtype,
        **{str(k): v for k, v in key_parts.items()},
    }
    blob = json.dumps(meta, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), meta


def real_stats(
    images: torch.Tensor | Iterable[torch.Tensor],
    cache_dir: Path | str,
    key_parts: Mapping[str, Any],
    features_fn: Callable[[torch.Tensor], np.ndarray],
    name: str = "real",
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Mean and covariance of the real images' features, computed once and cached on disk.

    The cache key is content-addressed: SHA-256 over the images' bytes, their count, shape and dtype,
    plus ``key_parts`` (the caller puts the metric name, feature dims and the weights file's hash or
    the feature extractor's identity there). The entry is an ``.npz`` file
    ``<cache_dir>/<name>_<key16>.npz`` written atomically (DESIGN.md §4, §6).

    :param images: ``(N, C, H, W)`` in [-1, 1], or an iterable of such batches (consumed once).
    :param cache_dir: folder of the cache (created).
    :param key_parts: extra JSON-able key components, e.g. ``{"metric": "fid", "dims": 2048,
        "weights_sha256": ...}``.
    :param features_fn: maps one ``(n, C, H, W)`` tensor to features ``(n, d)`` (e.g.
        ``lambda x: inception_features(model, x, 16)``); called only on a cache miss.
    :param name: file-name prefix (letters, digits, ``-_.``; other characters are replaced).
    :returns: ``(mu (d,), sigma (d, d), hit)``; ``hit`` is True when read from the cache.
    :raises ValueError: when there are no images, shapes differ, or fewer than 2 images.
    """
    batches = _as_batches(images)
    digest, meta = _content_digest(batches, key_parts)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "real"
    path = Path(cache_dir) / f"{safe}_{digest[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) == digest:
                    return data["mu"].astype(np.float64), data["sigma"].astype(np.float64), True
        except (OSError, KeyError, ValueError):
            pass  # unreadable or foreign entry: recompute and overwrite
    feats = np.concatenate([np.asarray(features_fn(b), dtype=np.float64) for b in batches], axis=0)
    mu, sigma = feature_stats(feats)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, key=np.array(digest), meta=np.array(json.dumps(meta, default=str)))
    return mu, sigma, False


# --------------------------------------------------------------------------------------------------
# Scorer
# --------------------------------------------------------------------------------------------------


class FidScorer:
    """FID (or its labelled fallback ``fd_teacher_d``) of generated images against real ones.

    ``mode == "fid"``: pytorch-fid's FID Inception features (``cfg.dims``); the weights are resolved
    at construction (so a missing file fails early with :class:`FidWeightsError`) and the network is
    loaded on the first :meth:`score`.

    ``mode == "fd_teacher_d"``: the Frechet distance in the feature space given by
    ``teacher_features``, a callable mapping images ``(N, C, H, W)`` in [-1, 1] to ``(N, d)``. For a
    pix2pix teacher D (which sees the 6-channel ``cat(input, output)``), close over the inputs, e.g.
    ``lambda y: teacher_d_features(D, x_heldout[:len(y)], y)`` with
    :func:`collabprune.objectives.teacher_d_features`; the callable is called once on the whole set
    (fake and real in the same order as the inputs), so ``fake[i]``, ``real[i]`` must come from input
    ``i``. ``teacher_key`` must identify the teacher and its inputs (e.g. the teacher checkpoint hash
    and split name): it is part of the real-statistics cache key.

    Every number this scorer returns is labelled by :attr:`metric_name` (``"fid"`` or
    ``"fd_teacher_d"``, never mixed).

    :param cfg: the ``reward.fid`` config (mode, weights, download_timeout_s, dims, max_images,
        batch_size).
    :param cache_dir: folder of the real-statistics cache (e.g. ``<run_dir>/fid_stats``).
    :param device: device of the Inception network.
    :param teacher_features: the feature callable for ``fd_teacher_d`` (ignored for ``fid``).
    :param teacher_key: identity of ``teacher_features`` for the cache (required for ``fd_teacher_d``).
    :raises FidWeightsError: ``fid`` mode and no weights can be found or downloaded.
    :raises ValueError: ``fd_teacher_d`` mode without ``teacher_features`` or ``teacher_key``.
    """

    def __init__(
        self,
        cfg: FidConfig,
        cache_dir: Path | str,
        device: str | torch.device = "cpu",
        teacher_features: FeatureFn | None = None,
        teacher_key: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.device = torch.device(device)
        self.metric_name: Literal["fid", "fd_teacher_d"] = cfg.mode
        self.cache_hits = 0
        self.cache_misses = 0
        self._model: nn.Module | None = None
        self._teacher_features = teacher_features
        self._teacher_key = teacher_key
        self.weights_path: Path | None = None
        if cfg.mode == "fid":
            self.weights_path = resolve_inception_weights(cfg.weights, cfg.download_timeout_s)
        else:
            if teacher_features is None or not teacher_key:
                raise ValueError(
                    "reward.fid.mode=fd_teacher_d needs teacher_features (images -> (N, d)) and teacher_key"
                )

    def _features_fn(self) -> Callable[[torch.Tensor], np.ndarray]:
        if self.metric_name == "fid":
            if self._model is None:
                assert self.weights_path is not None
                self._model = load_inception(self.weights_path, self.cfg.dims, self.device)
            model = self._model
            return lambda x: inception_features(model, x, self.cfg.batch_size)
        fn = self._teacher_features
        assert fn is not None

        def teacher(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return fn(x).detach().double().cpu().reshape(x.shape[0], -1).numpy()

        return teacher

    def _key_parts(self, real_key: str) -> dict[str, Any]:
        if self.metric_name == "fid":
            assert self.weights_path is not None
            return {
                "metric": "fid",
                "dims": self.cfg.dims,
                "weights_sha256": file_sha256(self.weights_path),
                "real_key": real_key,
            }
        return {"metric": "fd_teacher_d", "teacher_key": self._teacher_key, "real_key": real_key}

    def real_stats(self, real: torch.Tensor, real_key: str) -> tuple[np.ndarray, np.ndarray]:
        """Cached ``(mu, sigma)`` of ``real[:cfg.max_images]`` (updates the hit/miss counters).

        :param real: ``(N, C, H, W)`` in [-1, 1].
        :param real_key: a name for the real set (e.g. ``"heldout"``), part of the key and file name.
        """
        real = real[: self.cfg.max_images]
        mu, sigma, hit = real_stats(
            real, self.cache_dir, self._key_parts(real_key), self._features_fn(),
            name=f"{self.metric_name}_{real_key}",
        )
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1
        return mu, sigma

    def score(self, fake: torch.Tensor, real: torch.Tensor, real_key: str) -> float:
        """Frechet distance between ``fake`` and ``real`` in this scorer's feature space.

        Both sets are truncated to ``cfg.max_images``; the real statistics come from the cache.

        :param fake: generated images ``(N, C, H, W)`` in [-1, 1], N >= 2.
        :param real: real images ``(M, C, H, W)`` in [-1, 1], M >= 2.
        :param real_key: a name for the real set (see :meth:`real_stats`).
        :returns: the distance (labelled :attr:`metric_name`).
        :raises ValueError: fewer than 2 images, or non-finite features (a diverged generator).
        """
        mu_r, sigma_r = self.real_stats(real, real_key)
        fake = fake[: self.cfg.max_images]
        mu_f, sigma_f = feature_stats(self._features_fn()(fake))
        return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)

