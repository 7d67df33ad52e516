"""GAN losses as in the public pytorch-CycleGAN-and-pix2pix code (``models/networks.py: GANLoss``)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

__all__ = ["GANLoss"]


class GANLoss(nn.Module):
    """The GAN objective on a discriminator's raw prediction map.

    ``vanilla``: ``BCEWithLogitsLoss`` (the original GAN cross-entropy on logits); ``lsgan``:
    ``MSELoss`` (LSGAN, Mao et al. 2017). The target is a constant (``target_real`` or
    ``target_fake``) broadcast to the prediction's shape, as upstream does.

    :param gan_mode: ``"vanilla"`` or ``"lsgan"``.
    :param target_real: label of real images.
    :param target_fake: label of fake images.
    :raises ValueError: for another ``gan_mode``.
    """

    def __init__(
        self,
        gan_mode: Literal["vanilla", "lsgan"] = "vanilla",
        target_real: float = 1.0,
        target_fake: float = 0.0,
    ) -> None:
        super().__init__()
        if gan_mode == "vanilla":
            self.loss: nn.Module = nn.BCEWithLogitsLoss()
        elif gan_mode == "lsgan":
            self.loss = nn.MSELoss()
        else:
            raise ValueError(f"gan_mode={gan_mode!r}: allowed 'vanilla', 'lsgan'")
        self.gan_mode = gan_mode
        self.register_buffer("real_label", torch.tensor(float(target_real)), persistent=False)
        self.register_buffer("fake_label", torch.tensor(float(target_fake)), persistent=False)

    def target_tensor(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """The constant target, expanded to ``prediction``'s shape, device and dtype."""
        label = self.real_label if target_is_real else self.fake_label
        return label.to(device=prediction.device, dtype=prediction.dtype).expand_as(prediction)

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """Loss of ``prediction`` against the real/fake label.

        :param prediction: the discriminator's output (any shape, e.g. ``(N, 1, h, w)`` PatchGAN
            logits).
        :param target_is_real: whether the target is the real label.
        :returns: scalar tensor (mean over all elements).
        """
        return self.loss(prediction, self.target_tensor(prediction, target_is_real))
