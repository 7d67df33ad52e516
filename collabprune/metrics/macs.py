"""MACs and parameter counts in two conventions, and a fast MACs estimator (DESIGN.md §3).

Conventions (one multiply-accumulate = 1 MAC = 2 FLOPs; bias additions, norms and activations are
not counted, as ``torch.utils.flop_counter`` does not count them):

- ``macs`` (physical): what the layers compute, counted with
  :class:`torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2). A ``ConvTranspose2d`` costs
  ``C_in * C_out/groups * kh * kw * H_in * W_in`` per image (each *input* pixel is scattered once).
- ``macs_published`` (GAN-compression papers): the same, except that a ``ConvTranspose2d`` is counted
  on its *output* grid: ``C_in * C_out/groups * kh * kw * H_out * W_out``. For pix2pix's unet_256
  (ngf=64, 1x3x256x256) this gives 18.1 G against 6.05 G physical; resnet_9blocks gives 56.8 G
  (49.6 G physical).

:func:`conv_layer_costs` gives each convolution's cost per channel pair, from which
:mod:`collabprune.pruning.costs` builds the per-group table the search uses. This package is a leaf:
it knows nothing of prunable groups.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode for the block, then restore each one's own ``training`` flag.

    Used around counting/tracing forwards so that BatchNorm running statistics are never updated
    and dropout is off.

    :param model: any module (modified in place, restored on exit).
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """A zero input of ``input_shape`` on the model's device and floating dtype."""
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(tuple(int(s) for s in input_shape), device=device, dtype=dtype)


@dataclass(frozen=True)
class LayerCost:
    """Geometry and cost of one Conv2d/ConvTranspose2d call, for one example input.

    :param name: module name in ``model.named_modules()``.
    :param kind: ``conv`` (Conv2d) or ``deconv`` (ConvTranspose2d).
    :param in_channels: input channels.
    :param out_channels: output channels.
    :param groups: convolution groups.
    :param kernel: (kh, kw).
    :param stride: (sh, sw).
    :param in_hw: (H, W) of the input.
    :param out_hw: (H, W) of the output.
    :param batch: batch size B of the example input.
    :param macs: physical MACs of the call (whole batch).
    :param macs_published: MACs in the published convention (differs for ``deconv`` only).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    batch: int
    macs: int
    macs_published: int

    @property
    def unit(self) -> int:
        """Physical MACs per (input channel x output channel) pair, for ``groups == 1``."""
        h, w = self.in_hw if self.kind == "deconv" else self.out_hw
        return self.batch * self.kernel[0] * self.kernel[1] * h * w

    @property
    def unit_published(self) -> int:
        """Published-convention MACs per (input channel x output channel) pair, ``groups == 1``."""
        h, w = self.out_hw
        return self.batch * self.kernel[0] * self.kernel[1] * h * w


def _cost(name: str, m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerCost:
    kind = "deconv" if isinstance(m, nn.ConvTranspose2d) else "conv"
    b, cin, hin, win = (int(s) for s in x.shape)
    _, cout, hout, wout = (int(s) for s in y.shape)
    kh, kw = (int(k) for k in m.kernel_size)
    per_pair = b * kh * kw * cin * (cout // m.groups)
    phys = per_pair * (hin * win if kind == "deconv" else hout * wout)
    pub = per_pair * hout * wout
    return LayerCost(
        name=name,
        kind=kind,
        in_channels=cin,
        out_channels=cout,
        groups=int(m.groups),
        kernel=(kh, kw),
        stride=(int(m.stride[0]), int(m.stride[1])),
        in_hw=(hin, win),
        out_hw=(hout, wout),
        batch=b,
        macs=phys,
        macs_published=pub,
    )


@torch.no_grad()
def conv_layer_costs(model: nn.Module, example_input: torch.Tensor) -> dict[str, LayerCost]:
    """Run one eval-mode forward and record every Conv2d/ConvTranspose2d call.

    :param model: the network (not modified; its train/eval flags are restored).
    :param example_input: (B, C, H, W) input on the model's device.
    :return: name -> :class:`LayerCost`, in forward-execution order. A module called twice keeps
        its first geometry with the MACs of both calls summed.
    """
    names = {m: n for n, m in model.named_modules()}
    costs: dict[str, LayerCost] = {}

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        c = _cost(names[m], m, inputs[0], output)
        old = costs.get(c.name)
        if old is not None:
            c = replace(old, macs=old.macs + c.macs, macs_published=old.macs_published + c.macs_published)
        costs[c.name] = c

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CONV_TYPES)]
    try:
        with eval_mode(model):
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return costs


@torch.no_grad()
def macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 256, 256)) -> int:
    """Physical MACs of one forward pass, counted by ``FlopCounterMode`` (FLOPs / 2).

    :param model: the network (run once in eval mode on a zero input; flags restored).
    :param input_shape: (B, C, H, W) of the input; MACs are for the whole batch.
    :return: MACs (an integer count, not giga).
    """
    x = example_input(model, input_shape)
    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


@torch.no_grad()
def macs_published(model: nn.Module, input_shape: Sequence[int] = (1, 3, 256, 256)) -> int:
    """MACs in the GAN-compression papers' convention (ConvTranspose2d on the output grid).

    Measured like :func:`macs`; each ConvTranspose2d call is also recorded with a forward hook and
    its physical count is replaced by ``C_in * C_out/groups * kh * kw * H_out * W_out * B``.

    :param model: the network.
    :param input_shape: (B, C, H, W) of the input.
    :return: MACs (integer count).
    """
    x = example_input(model, input_shape)
    adjust = [0]

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        c = _cost("", m, inputs[0], output)
        adjust[0] += c.macs_published - c.macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    try:
        with eval_mode(model), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()) // 2 + adjust[0]


def params(model: nn.Module) -> int:
    """Number of parameters (elements of all ``model.parameters()``; buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


__all__ = [
    "LayerCost",
    "conv_layer_costs",
    "example_input",
    "eval_mode",
    "macs",
    "macs_published",
    "params",
]
