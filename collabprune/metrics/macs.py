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

For the search loop, :func:`group_macs_table` precomputes a per-layer table once, and
:func:`estimate_macs` turns kept-channel counts per prunable group into exact MACs in microseconds,
without building the pruned network.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:  # pragma: no cover - typing only
    from collabprune.pruning.groups import PrunableGroup

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


def _example(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
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
    x = _example(model, input_shape)
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
    x = _example(model, input_shape)
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


@dataclass(frozen=True)
class MacsTable:
    """Precomputed per-layer table: MACs of any kept-channel assignment by two mat-vec products.

    For layer ``l`` and kept counts ``k`` (one per group, network order):
    ``in_l = in_fixed[l] + in_map[l] @ k``, ``out_l = out_fixed[l] + out_map[l] @ k`` and
    ``MACs = sum_l unit[l] * in_l * out_l``. This is exact for groups=1 convolutions (cost is
    bilinear in the channel counts). A layer that no group touches is stored as a constant
    (``unit = its MACs``, ``in_fixed = out_fixed = 1``).

    :param layers: layer names, forward order.
    :param unit: (L,) int64 physical MACs per channel pair.
    :param unit_published: (L,) int64 published-convention MACs per channel pair.
    :param in_fixed: (L,) int64 input channels not belonging to any group.
    :param out_fixed: (L,) int64 output channels not belonging to any group.
    :param in_map: (L, G) int64 1 where group g feeds layer l's input.
    :param out_map: (L, G) int64 1 where group g is layer l's output.
    :param channels: (G,) int64 original channels per group.
    """

    layers: tuple[str, ...]
    unit: np.ndarray
    unit_published: np.ndarray
    in_fixed: np.ndarray
    out_fixed: np.ndarray
    in_map: np.ndarray
    out_map: np.ndarray
    channels: np.ndarray

    @property
    def num_groups(self) -> int:
        """G, the number of prunable groups."""
        return int(self.channels.shape[0])


def group_macs_table(
    model: nn.Module,
    groups: Sequence["PrunableGroup"],
    input_shape: Sequence[int] = (1, 3, 256, 256),
) -> MacsTable:
    """Build the :class:`MacsTable` of ``model`` for its prunable groups.

    :param model: the unpruned network the groups were discovered on.
    :param groups: groups from :func:`collabprune.pruning.groups.discover_groups` (network order;
        only ``out_layers``, ``in_layers`` and ``channels`` are read).
    :param input_shape: (B, C, H, W); the table's MACs are for this input.
    :raises NotImplementedError: a grouped convolution (groups > 1) belongs to a group.
    """
    costs = conv_layer_costs(model, _example(model, input_shape))
    names = list(costs)
    row = {n: i for i, n in enumerate(names)}
    L, G = len(names), len(groups)
    unit = np.zeros(L, dtype=np.int64)
    unit_pub = np.zeros(L, dtype=np.int64)
    in_fixed = np.zeros(L, dtype=np.int64)
    out_fixed = np.zeros(L, dtype=np.int64)
    in_map = np.zeros((L, G), dtype=np.int64)
    out_map = np.zeros((L, G), dtype=np.int64)
    for i, n in enumerate(names):
        in_fixed[i] = costs[n].in_channels
        out_fixed[i] = costs[n].out_channels
    touched = set()
    for g, grp in enumerate(groups):
        for n in grp.out_layers:
            out_map[row[n], g] += 1
            out_fixed[row[n]] -= grp.channels
            touched.add(n)
        for n, _offset in grp.in_layers:
            in_map[row[n], g] += 1
            in_fixed[row[n]] -= grp.channels
            touched.add(n)
    for i, n in enumerate(names):
        c = costs[n]
        if n in touched:
            if c.groups != 1:
                raise NotImplementedError(f"grouped convolution {n!r} (groups={c.groups}) in a prunable group")
            unit[i], unit_pub[i] = c.unit, c.unit_published
        else:  # constant cost
            unit[i], unit_pub[i] = c.macs, c.macs_published
            in_fixed[i] = out_fixed[i] = 1
    return MacsTable(
        layers=tuple(names),
        unit=unit,
        unit_published=unit_pub,
        in_fixed=in_fixed,
        out_fixed=out_fixed,
        in_map=in_map,
        out_map=out_map,
        channels=np.array([g.channels for g in groups], dtype=np.int64),
    )


def estimate_macs(table: MacsTable, kept: Sequence[int] | np.ndarray, published: bool = False) -> int:
    """MACs of the sub-network that keeps ``kept[g]`` channels of group ``g`` (no network built).

    Equals :func:`macs` (or :func:`macs_published`) of the pruned network exactly, for the input
    shape the table was built with. Runs in a few microseconds.

    :param table: from :func:`group_macs_table`.
    :param kept: kept channels per group, network order, each in [1, channels].
    :param published: use the published (ConvTranspose2d on the output grid) convention.
    :raises ValueError: wrong length.
    """
    k = np.asarray(kept, dtype=np.int64)
    if k.shape != table.channels.shape:
        raise ValueError(f"kept has {k.size} entries, the table has {table.num_groups} groups")
    cin = table.in_fixed + table.in_map @ k
    cout = table.out_fixed + table.out_map @ k
    unit = table.unit_published if published else table.unit
    return int(np.dot(unit, cin * cout))


__all__ = [
    "LayerCost",
    "MacsTable",
    "conv_layer_costs",
    "estimate_macs",
    "eval_mode",
    "group_macs_table",
    "macs",
    "macs_published",
    "params",
]
