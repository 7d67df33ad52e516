"""FID with pytorch-fid's Inception, its offline fallback ``fd_teacher_d``, and cached real statistics.

The Inception network and its weights are in :mod:`collabprune.metrics.inception`, the distance in
:mod:`collabprune.metrics.frechet`; this module caches real-image statistics and scores generators.

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
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from collabprune.config import FdMetric, FidConfig
from collabprune.io import atomic_path, file_sha256
from collabprune.metrics.frechet import feature_stats, frechet_distance
from collabprune.metrics.inception import FeatureFn, inception_features, load_inception, resolve_inception_weights

__all__ = ["FidScorer", "real_stats"]


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
        self.metric_name: FdMetric = cfg.mode
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
