"""The two model families of DESIGN.md §2 and the few things that differ between them.

- ``pix2pix`` (Isola et al. 2017): paired data (``aligned``), the conditional PatchGAN D sees
  ``cat(A, G(A))`` (``input_nc + output_nc`` channels), fine-tuning adds L1 to the ground truth, and
  the held-out metrics include L1/PSNR/SSIM to it.
- ``cyclegan`` (Zhu et al. 2017): unpaired data (``unaligned``); the compressed network is G_A
  (A -> B) and its adversary the unconditional PatchGAN that judges B images (DESIGN.md's "D_B";
  upstream's files call it ``D_A``, the paper's D_Y), which sees a B image alone (``output_nc``
  channels); fine-tuning uses the GAN loss plus distillation to the teacher G_A's outputs
  (GAN Compression, Li et al. 2020, §3.1), and the held-out metrics compare G_s(A) with real B images
  (FID / Frechet distances only: there is no ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collabprune.config import RunConfig

__all__ = ["FAMILIES", "Family", "family_of"]


@dataclass(frozen=True)
class Family:
    """What a model family fixes about the discriminator, the data and the metrics.

    :param name: ``"pix2pix"`` or ``"cyclegan"`` (``model.family``).
    :param conditional_d: D sees ``cat(A, B)`` (pix2pix) rather than a B image alone (CycleGAN's D_B).
    :param paired: the data has a ground truth B for every A (L1 to it in fine-tuning and held-out).
    :param dataset_mode: the upstream dataset layout the family reads (``data.dataset_mode``).
    """

    name: str
    conditional_d: bool
    paired: bool
    dataset_mode: str

    def d_input_nc(self, input_nc: int, output_nc: int) -> int:
        """Input channels of D: ``input_nc + output_nc`` (conditional) or ``output_nc``."""
        return input_nc + output_nc if self.conditional_d else output_nc

    def d_input(self, real_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        """What D sees for a B-domain image (real or generated) of input ``real_a``.

        :param real_a: (B, input_nc, H, W) the generator's inputs (ignored by an unconditional D).
        :param image_b: (B, output_nc, H, W) a real or generated B image.
        :returns: (B, d_input_nc, H, W).
        """
        return torch.cat([real_a, image_b], 1) if self.conditional_d else image_b


FAMILIES: dict[str, Family] = {
    "pix2pix": Family("pix2pix", conditional_d=True, paired=True, dataset_mode="aligned"),
    "cyclegan": Family("cyclegan", conditional_d=False, paired=False, dataset_mode="unaligned"),
}


def family_of(cfg: "RunConfig") -> Family:
    """The :class:`Family` of a run config (``model.family``)."""
    return FAMILIES[cfg.model.family]
