"""A feature network kept for held-out evaluation only, and the Frechet distance in its space.

DESIGN.md §4.1: the numbers that compare methods must come from metrics that share no weights with
anything the fine-tuning or the reward uses. Offline there are no Inception weights, and the teacher
D is the fine-tuning adversary's starting point, so a small CNN is trained once per dataset on a
self-supervised task of its own, the way the pix2pix Cityscapes benchmark scores with a segmentation
network: given a training target image that was rotated by a multiple of 90 degrees (Gidaris et al.
2018, "Unsupervised representation learning by predicting image rotations") and whose colour channels
were permuted, predict the rotation and the permutation (4 x 6 = 24 classes; rotations only for
1-channel images). Telling a natural image from a colour-swapped or rotated one needs its structure
and its colours, so the penultimate features (64-d, spatially averaged) separate plausible outputs
from implausible ones. The distance between a generator's test outputs and the real test targets in
this space is ``fd_eval``.

The trained network is cached by the content of its training images, the architecture version and
the seed (``eval_net_<key>.pt``, a state dict read with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from collabprune.io import atomic_torch_save
from collabprune.metrics.frechet import feature_stats, frechet_distance

__all__ = ["EVAL_NET_VERSION", "EvalFeatureNet", "fd_eval", "load_or_train_eval_net", "train_eval_net"]

#: Bump when the architecture or the training recipe changes (part of the cache key).
EVAL_NET_VERSION = 1
#: Side of the square the images are resized to before the network.
EVAL_SIZE = 64
FEATURE_DIM = 64
_PERMS_3 = list(itertools.permutations(range(3)))


class EvalFeatureNet(nn.Module):
    """Small CNN: images (B, C, H, W) in [-1, 1] -> features (B, 64); :meth:`logits` -> (B, classes).

    Four stride-2 3x3 convolutions (32, 64, 64, 64 channels) with BatchNorm and ReLU on a 64x64
    resize, then a spatial mean.

    :param in_channels: image channels C (1 or 3).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.classes = 4 * (len(_PERMS_3) if in_channels == 3 else 1)
        layers: list[nn.Module] = []
        prev = in_channels
        for width in (32, 64, 64, FEATURE_DIM):
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            prev = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(FEATURE_DIM, self.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, 64) of images (B, C, H, W) in [-1, 1]."""
        x = F.interpolate(x, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return self.body(x).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, classes) of the rotation x permutation task."""
        return self.head(self(x))


def _transform(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Apply class ``labels`` (rotation = label % 4, permutation = label // 4) to each image."""
    out = []
    for img, label in zip(images, labels.tolist()):
        rot, perm = label % 4, label // 4
        if img.shape[0] == 3:
            img = img[list(_PERMS_3[perm])]
        out.append(torch.rot90(img, rot, dims=(1, 2)))
    return torch.stack(out)


def train_eval_net(images: torch.Tensor, seed: int = 0, steps: int = 400, batch_size: int = 32) -> EvalFeatureNet:
    """Train an :class:`EvalFeatureNet` on its self-supervised task.

    Each step draws ``batch_size`` images (random horizontal flip), a random class per image, and
    applies it; Adam (lr 1e-3), cross-entropy.

    :param images: training targets (N, C, H, W) in [-1, 1], N >= 2.
    :param seed: seeds the weights and the draws.
    :param steps: optimisation steps.
    :returns: the network in eval mode, on the CPU.
    :raises ValueError: fewer than 2 images or C not in (1, 3).
    """
    if images.ndim != 4 or images.shape[0] < 2 or images.shape[1] not in (1, 3):
        raise ValueError(f"train_eval_net: need (N >= 2, C in (1, 3), H, W) images, got {tuple(images.shape)}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = EvalFeatureNet(images.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    small = F.interpolate(images.float().cpu(), size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, small.shape[0], (batch_size,), generator=gen)
        batch = small[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        labels = torch.randint(0, net.classes, (batch_size,), generator=gen)
        loss = F.cross_entropy(net.logits(_transform(batch, labels)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def _key(images: torch.Tensor, seed: int, steps: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": EVAL_NET_VERSION, "seed": seed, "steps": steps,
                         "shape": list(images.shape)}).encode())
    h.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_or_train_eval_net(images: torch.Tensor, cache_dir: Path | str, seed: int = 0, steps: int = 400) -> EvalFeatureNet:
    """The evaluation network for a set of training targets: from the cache, else trained and cached.

    :param images: the training split's targets (N, C, H, W) in [-1, 1].
    :param cache_dir: folder of ``eval_net_<key>.pt`` (created).
    :param seed: training seed.
    :param steps: training steps.
    :returns: the network in eval mode, on the CPU, with gradients off.
    """
    path = Path(cache_dir) / f"eval_net_{_key(images, seed, steps)}.pt"
    net = EvalFeatureNet(images.shape[1])
    if path.is_file():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval().requires_grad_(False)
        except (RuntimeError, OSError, ValueError):
            pass  # unreadable or foreign: train again and overwrite
    net = train_eval_net(images, seed, steps)
    atomic_torch_save(net.state_dict(), path)
    return net.requires_grad_(False)


@torch.no_grad()
def fd_eval(net: EvalFeatureNet, fake: torch.Tensor, real: torch.Tensor, batch_size: int = 64) -> float:
    """Frechet distance between generated and real images in the evaluation network's feature space.

    :param net: the evaluation network (:func:`load_or_train_eval_net`).
    :param fake: generated images (N, C, H, W) in [-1, 1], N >= 2.
    :param real: real images (M, C, H, W) in [-1, 1], M >= 2.
    :returns: the distance (same formula as FID: Heusel et al. 2017, eq. 6).
    :raises ValueError: fewer than 2 images, or non-finite features.
    """
    device = next(net.parameters()).device

    def feats(x: torch.Tensor) -> np.ndarray:
        parts = [net(x[i:i + batch_size].to(device)).double().cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(parts).numpy()

    mu_f, sigma_f = feature_stats(feats(fake))
    mu_r, sigma_r = feature_stats(feats(real))
    return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)
