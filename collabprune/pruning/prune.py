"""Keep ratios -> a physically pruned sub-network that inherits the teacher's weights (DESIGN.md §3).

For each prunable group (network order) the kept channel count is :func:`kept_channels`; the kept
channels are the most important ones by the group's magnitude summed over all coupled members
(L1 or L2, torch-pruning's ``GroupMagnitudeImportance`` with ``group_reduction="sum"``), or random
(seeded); the rest are removed with torch-pruning. The pruned network's output shape is the
teacher's, and in eval mode it computes exactly what the teacher computes with the removed channels
zeroed.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from collabprune.config import PruningConfig
from collabprune.metrics.macs import CONV_TYPES
from collabprune.pruning.groups import NORM_TYPES, ChannelTrace, PrunableGroup, trace_groups
from collabprune.models.spec import SubnetSpec, infer_builder


def kept_channels(channels: int, ratio: float, cfg: PruningConfig) -> int:
    """Channels kept of a group of ``channels`` at keep ``ratio`` (pure function).

    ``keep = round_to * floor(ratio * channels / round_to + 1/2)`` (nearest multiple of
    ``round_to``, halves up), then clamped to ``[max(min_channels, round_to), channels]``; the lower
    bound is ``channels`` itself when the group is smaller. ``ratio == 1`` always keeps every
    channel (even when ``channels`` is not a multiple of ``round_to``).

    :param channels: channels of the group (>= 1).
    :param ratio: keep ratio in (0, 1].
    :param cfg: ``round_to`` and ``min_channels`` are read.
    :raises ValueError: ``ratio`` outside (0, 1] or not finite; ``channels < 1``.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    r = float(ratio)
    if not math.isfinite(r) or not 0.0 < r <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio!r}")
    if r == 1.0:
        return int(channels)
    step = int(cfg.round_to)
    keep = step * math.floor(r * channels / step + 0.5)
    lower = min(max(int(cfg.min_channels), step), channels)
    return int(min(max(keep, lower), channels))


def _check_ratios(ratios: Sequence[float], groups: Sequence[PrunableGroup]) -> list[float]:
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError):
        raise ValueError(f"keep ratios must be a sequence of numbers, got {ratios!r}") from None
    if len(values) != len(groups):
        raise ValueError(f"expected {len(groups)} keep ratios (one per prunable group), got {len(values)}")
    bad = [(i, r) for i, r in enumerate(values) if not math.isfinite(r) or not 0.0 < r <= 1.0]
    if bad:
        where = ", ".join(f"group {i} ({groups[i].name}) = {r!r}" for i, r in bad[:3])
        raise ValueError(f"keep ratios must be in (0, 1]; bad: {where}")
    return values


def _importance(cfg: PruningConfig) -> tp.importance.Importance | None:
    if cfg.importance == "random":
        return None
    p = 1 if cfg.importance == "l1" else 2
    return tp.importance.GroupMagnitudeImportance(p=p, group_reduction="sum", normalizer=None)


def select_channels(
    trace: ChannelTrace, kept: Sequence[int], cfg: PruningConfig, seed: int = 0
) -> list[list[int]]:
    """Indices (ascending) of the channels each group keeps: its ``kept[g]`` most important ones.

    Ties are broken towards lower indices. ``importance == "random"`` draws scores from a
    ``torch.Generator`` seeded with ``seed`` (groups in network order).

    :param trace: from :func:`trace_groups` on the (unpruned) network.
    :param kept: kept channels per group.
    :param cfg: ``importance`` is read.
    :param seed: seed of the random importance.
    """
    scorer = _importance(cfg)
    gen = torch.Generator().manual_seed(int(seed))
    out: list[list[int]] = []
    for grp, tp_group, k in zip(trace.groups, trace.tp_groups, kept):
        if k >= grp.channels:
            out.append(list(range(grp.channels)))
            continue
        if scorer is None:
            scores = torch.rand(grp.channels, generator=gen)
        else:
            scores = scorer(tp_group)
            scores = torch.zeros(grp.channels) if scores is None else scores.detach().float().cpu()
        order = torch.sort(-scores, stable=True).indices[:k]
        out.append(sorted(int(i) for i in order))
    return out


def _layer_entries(
    model: nn.Module, groups: Sequence[PrunableGroup], kept_idx: Sequence[Sequence[int]]
) -> dict[str, dict[str, Any]]:
    """The spec's ``layers`` entries, computed from the groups' member lists (teacher indices)."""
    out_segs: dict[str, list[tuple[int, int]]] = {}
    in_segs: dict[str, list[tuple[int, int]]] = {}
    for g, grp in enumerate(groups):
        for n in (*grp.out_layers, *grp.norm_layers):
            out_segs.setdefault(n, []).append((g, 0))
        for n, offset in grp.in_layers:
            in_segs.setdefault(n, []).append((g, offset))

    def kept_of(size: int, segs: list[tuple[int, int]]) -> list[int] | None:
        if not segs:
            return None
        removed: set[int] = set()
        for g, offset in segs:
            keep = set(kept_idx[g])
            removed.update(offset + i for i in range(groups[g].channels) if i not in keep)
        return None if not removed else [i for i in range(size) if i not in removed]

    layers: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, CONV_TYPES):
            in_idx = kept_of(m.in_channels, in_segs.get(name, []))
            out_idx = kept_of(m.out_channels, out_segs.get(name, []))
            layers[name] = {
                "type": type(m).__name__,
                "in": len(in_idx) if in_idx is not None else m.in_channels,
                "out": len(out_idx) if out_idx is not None else m.out_channels,
                "in_idx": in_idx,
                "out_idx": out_idx,
            }
        elif isinstance(m, NORM_TYPES):
            idx = kept_of(m.num_features, out_segs.get(name, []))
            if idx is not None:
                layers[name] = {"type": type(m).__name__, "num_features": len(idx), "idx": idx}
    return layers


def _check_kwargs(model: nn.Module, builder: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``builder(**kwargs)`` has ``model``'s parameter names and shapes."""
    from collabprune.models.networks import define_D, define_G

    fn = define_G if builder == "define_G" else define_D
    with torch.device("meta"):
        ref = fn(**kwargs)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise ValueError(f"{builder}(**{dict(kwargs)}) does not rebuild this network; first differences: {diff}")


def prune_model(
    model: nn.Module,
    example_input: torch.Tensor,
    ratios: Sequence[float],
    cfg: PruningConfig,
    seed: int = 0,
    build_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, SubnetSpec]:
    """Prune a deep copy of ``model`` to the given keep ratios.

    :param model: teacher network (never modified), built with ``inplace=False``.
    :param example_input: (B, C, H, W) tracing input on the model's device.
    :param ratios: one keep ratio in (0, 1] per group of :func:`discover_groups` (network order).
    :param cfg: ``round_to``, ``min_channels`` and ``importance`` are read.
    :param seed: seed of the ``random`` importance.
    :param build_kwargs: define_G/define_D keyword arguments recorded in the spec; inferred from
        the network when ``None`` (see :func:`~collabprune.models.spec.infer_builder`).
    :return: ``(pruned, spec)``: the pruned network (same train/eval flags and device as the
        teacher, output shape unchanged) and its :class:`SubnetSpec`.
    :raises ValueError: wrong number of ratios, a ratio outside (0, 1], or ``build_kwargs`` that
        do not rebuild the network.
    """
    family, builder, kwargs = infer_builder(model)
    if build_kwargs is not None:
        kwargs = dict(build_kwargs)
    _check_kwargs(model, builder, kwargs)

    net = copy.deepcopy(model)
    trace = trace_groups(net, example_input)
    values = _check_ratios(ratios, trace.groups)
    kept = [kept_channels(g.channels, r, cfg) for g, r in zip(trace.groups, values)]
    kept_idx = select_channels(trace, kept, cfg, seed)
    layers = _layer_entries(net, trace.groups, kept_idx)

    for grp, root, keep in zip(trace.groups, trace.roots, kept_idx):
        removed = sorted(set(range(grp.channels)) - set(keep))
        if removed:
            pruner = trace.graph.get_pruner_of_module(root)
            trace.graph.get_pruning_group(root, pruner.prune_out_channels, removed).prune()

    spec = SubnetSpec(
        family=family,
        builder=builder,
        kwargs=kwargs,
        groups=[
            {"name": g.name, "channels": g.channels, "kept": len(k), "kept_indices": list(k)}
            for g, k in zip(trace.groups, kept_idx)
        ],
        layers=layers,
    )
    _check_shapes(net, spec)
    return net, spec


def _check_shapes(net: nn.Module, spec: SubnetSpec) -> None:
    """Internal consistency: the torch-pruning result has the shapes the spec records."""
    for name, m in net.named_modules():
        entry = spec.layers.get(name)
        if isinstance(m, CONV_TYPES):
            got = (m.in_channels, m.out_channels)
            want = (entry["in"], entry["out"]) if entry else got
        elif isinstance(m, NORM_TYPES) and entry:
            got, want = m.num_features, entry["num_features"]
        else:
            continue
        if got != want:
            raise RuntimeError(f"pruned layer {name!r} has shape {got}, the spec records {want}")


__all__ = ["kept_channels", "prune_model", "select_channels"]
