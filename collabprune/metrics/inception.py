"""pytorch-fid's FID Inception: where its weights come from, and the network behind our image convention.

The weights are looked up in order: the config path (``reward.fid.weights``), the environment variable
``COLLABPRUNE_FID_WEIGHTS``, the torch hub cache, then a download with a network timeout; offline with
none of them, :class:`~collabprune.errors.FidWeightsError`. Images handed to the network are
``(N, C, H, W)`` float in ``[-1, 1]``, converted to the ``[0, 1]`` pytorch-fid's
``InceptionV3(normalize_input=True)`` expects.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn

from collabprune.errors import FidWeightsError
from collabprune.io import atomic_path

__all__ = [
    "FID_WEIGHTS_ENV",
    "FID_WEIGHTS_FILENAME",
    "FeatureFn",
    "default_fid_weights_url",
    "hub_cache_weights_path",
    "inception_features",
    "load_inception",
    "pytorch_fid_patched",
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
# Weights resolution
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
# Network
# --------------------------------------------------------------------------------------------------


@contextmanager
def pytorch_fid_patched(name: str, value: Any) -> Iterator[None]:
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
        with pytorch_fid_patched("load_state_dict_from_url", lambda *a, **k: state):
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
