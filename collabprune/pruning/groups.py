"""The channel space: coupled prunable channel groups of a network (DESIGN.md §3).

Groups are found with torch-pruning's :class:`~torch_pruning.DependencyGraph`, traced with an example
input. A group is a set of channels that must be removed together: the output channels of one or
more convolutions (and their norms), and the input channels of every convolution that reads them,
through U-Net skip concatenations (torch-pruning's concat index mapping gives the offsets) and the
ResNet residual additions (the whole residual stream is one group). The network's output layer
(the last convolution executed: the U-Net's outermost ConvTranspose2d, the ResNet's last Conv2d,
the PatchGAN's 1-channel head) is never pruned.

With upstream defaults: unet_256 has 15 groups, unet_128 13, resnet_9blocks 14, PatchGAN
(n_layers=3) 4.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch_pruning as tp
from torch import nn

from collabprune.metrics.macs import CONV_TYPES, LayerCost, conv_layer_costs, eval_mode

NORM_TYPES = (nn.BatchNorm2d, nn.InstanceNorm2d)


@dataclass(frozen=True)
class PrunableGroup:
    """One prunable channel group, plain data (the RL environment's per-step features).

    :param index: position in network order (0-based).
    :param name: root layer: the group's first convolution in forward order whose output channels
        are the group (e.g. ``model.model.1.model.1``; ``model.7`` for the ResNet residual stream).
    :param layers: every module of the group (convolutions and norms), forward/registration order.
    :param out_layers: convolutions whose *output* channels are the group (several for the residual
        stream).
    :param norm_layers: BatchNorm2d/InstanceNorm2d layers normalising the group's channels.
    :param in_layers: ``(name, offset)`` of every convolution whose *input* channels include the
        group: the group's channel ``i`` is that layer's input channel ``offset + i`` (offset > 0
        for the second half of a U-Net skip concatenation).
    :param channels: channels of the group (unpruned).
    :param kind: ``conv`` (Conv2d root) or ``deconv`` (ConvTranspose2d root).
    :param kernel: root kernel size (square kernels; the first dimension).
    :param stride: root stride (first dimension).
    :param in_channels: input channels of the root layer (unpruned network).
    :param feature_hw: (H, W) of the root layer's output for the example input.
    :param macs: physical MACs (whole example batch) of all convolutions whose cost depends on the
        group, i.e. ``out_layers`` and ``in_layers``; a layer shared by two groups counts in both.
    :param macs_share: fraction of the network's physical MACs attributed to this group, without
        double counting, so that the shares of all groups sum to 1 (up to layers no group touches):
        a convolution's MACs are split half to its output group and half to its input groups when
        both exist (the input half divided among input groups in proportion to their channels),
        or wholly to whichever side is prunable.
    """

    index: int
    name: str
    layers: tuple[str, ...]
    out_layers: tuple[str, ...]
    norm_layers: tuple[str, ...]
    in_layers: tuple[tuple[str, int], ...]
    channels: int
    kind: str
    kernel: int
    stride: int
    in_channels: int
    feature_hw: tuple[int, int]
    macs: int
    macs_share: float

    def to_dict(self) -> dict[str, Any]:
        """The group as JSON-compatible data (tuples become lists)."""
        return {
            "index": self.index,
            "name": self.name,
            "layers": list(self.layers),
            "out_layers": list(self.out_layers),
            "norm_layers": list(self.norm_layers),
            "in_layers": [[n, o] for n, o in self.in_layers],
            "channels": self.channels,
            "kind": self.kind,
            "kernel": self.kernel,
            "stride": self.stride,
            "in_channels": self.in_channels,
            "feature_hw": list(self.feature_hw),
            "macs": self.macs,
            "macs_share": self.macs_share,
        }


@dataclass
class ChannelTrace:
    """Groups with the torch-pruning objects behind them (used by :mod:`collabprune.pruning.prune`).

    :param graph: the dependency graph, built on ``model``.
    :param groups: the plain groups, network order.
    :param tp_groups: the torch-pruning group of each plain group (full indices, rooted at
        ``groups[i].name``).
    :param roots: the root module of each group.
    :param costs: per-convolution geometry and MACs, forward order.
    :param output_layer: name of the never-pruned output layer.
    """

    graph: tp.DependencyGraph
    groups: list[PrunableGroup]
    tp_groups: list[Any]
    roots: list[nn.Module]
    costs: dict[str, LayerCost]
    output_layer: str


def _is_out(graph: tp.DependencyGraph, module: nn.Module, handler: Any) -> bool:
    pruner = graph.get_pruner_of_module(module)
    return pruner is not None and handler == pruner.prune_out_channels


def _attribute_shares(
    costs: dict[str, LayerCost], out_of: dict[str, int], ins_of: dict[str, list[int]], channels: list[int]
) -> list[float]:
    """MACs share per group (see :attr:`PrunableGroup.macs_share`)."""
    total = sum(c.macs for c in costs.values()) or 1
    share = [0.0] * len(channels)
    for name, c in costs.items():
        g_out = out_of.get(name)
        g_ins = ins_of.get(name, [])
        if g_out is None and not g_ins:
            continue
        m = float(c.macs)
        in_part = m / 2 if g_out is not None and g_ins else (m if g_ins else 0.0)
        if g_out is not None:
            share[g_out] += m - in_part
        in_ch = sum(channels[g] for g in g_ins)
        for g in g_ins:
            share[g] += in_part * channels[g] / in_ch
    return [s / total for s in share]


@contextmanager
def _requires_grad(model: nn.Module) -> Iterator[None]:
    """Parameters require grad during the trace (torch-pruning's graph is built from the autograd
    graph: a frozen model, e.g. a teacher, would show no groups); flags restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def trace_groups(model: nn.Module, example_input: torch.Tensor) -> ChannelTrace:
    """Trace ``model`` and return its groups together with the torch-pruning objects.

    The model is traced in eval mode (running statistics untouched, flags restored); gradients
    are enabled for the trace, as torch-pruning requires. Build networks with ``inplace=False``.

    :param model: a pix2pix/CycleGAN generator or PatchGAN discriminator (not modified).
    :param example_input: (B, C, H, W) input on the model's device (B=1 recommended).
    :raises ValueError: the model has no convolution.
    :raises NotImplementedError: a coupled channel mapping that is not an offset (unsupported).
    """
    costs = conv_layer_costs(model, example_input)
    if not costs:
        raise ValueError("the model has no Conv2d/ConvTranspose2d layer to prune")
    order = {n: i for i, n in enumerate(costs)}
    reg_order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    name_of = {m: n for n, m in model.named_modules()}
    module_of = dict(model.named_modules())
    output_layer = list(costs)[-1]

    with eval_mode(model), _requires_grad(model), torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        raw = list(
            graph.get_all_groups(
                ignored_layers=[module_of[output_layer]], root_module_types=CONV_TYPES
            )
        )

    found: list[tuple[int, nn.Module, Any]] = []
    for grp in raw:
        outs = [
            it.dep.target.module
            for it in grp
            if isinstance(it.dep.target.module, CONV_TYPES) and _is_out(graph, it.dep.target.module, it.dep.handler)
        ]
        root = min(outs, key=lambda m: order.get(name_of[m], len(order)))
        if root is not grp[0].dep.target.module:
            pruner = graph.get_pruner_of_module(root)
            grp = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(pruner.get_out_channels(root))))
        found.append((order[name_of[root]], root, grp))
    found.sort(key=lambda t: t[0])

    channels = [int(graph.get_out_channels(root)) for _, root, _ in found]
    out_of: dict[str, int] = {}
    ins_of: dict[str, list[int]] = {}
    infos = []
    for g, (_, root, grp) in enumerate(found):
        out_layers, norms, in_layers = [], [], []
        for it in grp:
            m = it.dep.target.module
            if not isinstance(m, nn.Module) or m not in name_of:
                continue  # torch-pruning's internal ops (concat, elementwise, reshape)
            n = name_of[m]
            idxs, roots = list(it.idxs), list(it.root_idxs)
            offsets = {i - r for i, r in zip(idxs, roots)}
            if len(offsets) != 1 or sorted(roots) != list(range(channels[g])):
                raise NotImplementedError(f"layer {n!r}: channel mapping of group {g} is not a plain offset")
            offset = offsets.pop()
            if isinstance(m, NORM_TYPES):
                norms.append(n)
            elif isinstance(m, CONV_TYPES) and _is_out(graph, m, it.dep.handler):
                out_layers.append(n)
                out_of[n] = g
            elif isinstance(m, CONV_TYPES):
                in_layers.append((n, int(offset)))
                ins_of.setdefault(n, []).append(g)
        out_layers.sort(key=reg_order.__getitem__)
        norms.sort(key=reg_order.__getitem__)
        in_layers.sort(key=lambda t: (reg_order[t[0]], t[1]))
        infos.append((root, grp, out_layers, norms, in_layers))

    shares = _attribute_shares(costs, out_of, ins_of, channels)
    groups: list[PrunableGroup] = []
    for g, (root, grp, out_layers, norms, in_layers) in enumerate(infos):
        rname = name_of[root]
        c = costs[rname]
        dependent = set(out_layers) | {n for n, _ in in_layers}
        layers = sorted(set(out_layers) | set(norms) | {n for n, _ in in_layers}, key=reg_order.__getitem__)
        groups.append(
            PrunableGroup(
                index=g,
                name=rname,
                layers=tuple(layers),
                out_layers=tuple(out_layers),
                norm_layers=tuple(norms),
                in_layers=tuple(in_layers),
                channels=channels[g],
                kind=c.kind,
                kernel=c.kernel[0],
                stride=c.stride[0],
                in_channels=c.in_channels,
                feature_hw=c.out_hw,
                macs=int(sum(costs[n].macs for n in dependent)),
                macs_share=float(shares[g]),
            )
        )
    return ChannelTrace(
        graph=graph,
        groups=groups,
        tp_groups=[grp for _, grp, *_ in infos],
        roots=[root for root, *_ in infos],
        costs=costs,
        output_layer=output_layer,
    )


def discover_groups(model: nn.Module, example_input: torch.Tensor) -> list[PrunableGroup]:
    """The prunable channel groups of ``model``, in network order.

    :param model: generator (UnetGenerator/ResnetGenerator) or NLayerDiscriminator, built with
        ``inplace=False``; not modified (traced in eval mode, flags restored).
    :param example_input: (B, C, H, W) input on the model's device, e.g. (1, 3, 256, 256) for
        unet_256, (1, 6, 256, 256) for a conditional PatchGAN. ``feature_hw`` and ``macs`` are
        for this input.
    :return: one :class:`PrunableGroup` per coupled group; the output layer belongs to none.
    :raises ValueError: the model has no convolution.
    """
    return trace_groups(model, example_input).groups


__all__ = ["ChannelTrace", "PrunableGroup", "discover_groups", "trace_groups"]
