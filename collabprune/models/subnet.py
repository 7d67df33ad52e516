"""Rebuild a pruned sub-network from its :class:`~collabprune.models.spec.SubnetSpec` (plain PyTorch).

No torch-pruning and no pickles: the full network is built with our ``define_G``/``define_D``, then
every layer the spec lists is replaced by a fresh layer of the recorded shape (same kernel, stride,
padding, output padding, bias, affine and running-stats settings). The module tree and state-dict
keys are therefore exactly those of the network :func:`collabprune.pruning.prune.prune_model`
returned, so its state dict loads with ``strict=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from collabprune.errors import CheckpointError
from collabprune.models.networks import define_D, define_G
from collabprune.models.spec import SubnetSpec


def _build_full(spec: SubnetSpec) -> nn.Module:
    fn = define_G if spec.builder == "define_G" else define_D
    try:
        return fn(**spec.kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"sub-network spec kwargs cannot build the network: {err}") from None


def _resized(old: nn.Module, entry: dict[str, Any], name: str) -> nn.Module:
    """A fresh layer like ``old`` with the channel counts of ``entry``."""
    if type(old).__name__ != entry["type"]:
        raise CheckpointError(f"spec layer {name!r} is a {entry['type']}, the network has a {type(old).__name__}")
    if isinstance(old, nn.ConvTranspose2d):
        return nn.ConvTranspose2d(
            int(entry["in"]), int(entry["out"]), old.kernel_size, stride=old.stride, padding=old.padding,
            output_padding=old.output_padding, groups=old.groups, bias=old.bias is not None,
            dilation=old.dilation, padding_mode=old.padding_mode,
        )
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(
            int(entry["in"]), int(entry["out"]), old.kernel_size, stride=old.stride, padding=old.padding,
            dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
        )
    if isinstance(old, (nn.BatchNorm2d, nn.InstanceNorm2d)):
        return type(old)(
            int(entry["num_features"]), eps=old.eps, momentum=old.momentum, affine=old.affine,
            track_running_stats=old.track_running_stats,
        )
    raise CheckpointError(f"spec layer {name!r}: cannot resize a {type(old).__name__}")


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _apply_layers(net: nn.Module, spec: SubnetSpec) -> nn.Module:
    modules = dict(net.named_modules())
    for name, entry in spec.layers.items():
        old = modules.get(name)
        if old is None:
            raise CheckpointError(f"spec layer {name!r} is not a module of {spec.builder}(**{spec.kwargs})")
        if isinstance(old, (nn.Conv2d, nn.ConvTranspose2d)) and (old.in_channels, old.out_channels) == (
            entry["in"], entry["out"]
        ) and type(old).__name__ == entry["type"]:
            continue
        _replace(net, name, _resized(old, entry, name))
    return net


def build_from_spec(spec: SubnetSpec) -> nn.Module:
    """The pruned network's architecture, in our own classes (fresh, untrained weights).

    :param spec: the sub-network spec.
    :return: a network whose state-dict keys and shapes equal the pruned network's; load trained
        weights into it with ``load_state_dict(..., strict=True)``.
    :raises CheckpointError: the spec's builder arguments or layers do not fit our networks.
    """
    return _apply_layers(_build_full(spec), spec)


def _take(t: torch.Tensor, dim: int, idx: list[int] | None) -> torch.Tensor:
    if idx is None:
        return t
    return t.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device))


def _sliced(module: nn.Module, entry: dict[str, Any] | None, key: str, t: torch.Tensor) -> torch.Tensor:
    """The teacher tensor ``t`` (parameter/buffer ``key`` of ``module``) cut to the spec's indices."""
    if entry is None:
        return t
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        out_idx, in_idx = entry.get("out_idx"), entry.get("in_idx")
        if key == "bias":
            return _take(t, 0, out_idx)
        if isinstance(module, nn.ConvTranspose2d):  # weight: (C_in, C_out/groups, kh, kw)
            return _take(_take(t, 0, in_idx), 1, out_idx)
        return _take(_take(t, 0, out_idx), 1, in_idx)  # weight: (C_out, C_in/groups, kh, kw)
    if key == "num_batches_tracked":
        return t
    return _take(t, 0, entry.get("idx"))


@torch.no_grad()
def inherit_from_teacher(spec: SubnetSpec, teacher: nn.Module) -> nn.Module:
    """Build the pruned network and fill it with the teacher's weights at the kept indices.

    Equals (parameters and buffers) the network :func:`~collabprune.pruning.prune.prune_model`
    returns for the same teacher and ratios; uses only the spec's index lists.

    :param spec: the sub-network spec.
    :param teacher: the unpruned network the spec was made from (any device; the result is put
        on the teacher's device and in its train/eval mode).
    :raises CheckpointError: the teacher's keys or shapes do not match ``spec.kwargs``.
    """
    full = _build_full(spec)
    want = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    tsd = teacher.state_dict()
    have = {k: tuple(v.shape) for k, v in tsd.items()}
    if want != have:
        missing = sorted(set(want) - set(have))[:3]
        extra = sorted(set(have) - set(want))[:3]
        shapes = [k for k in want.keys() & have.keys() if want[k] != have[k]][:3]
        raise CheckpointError(
            f"teacher does not match {spec.builder}(**{spec.kwargs}): missing {missing}, unexpected {extra}, "
            f"shape mismatch {shapes}"
        )
    net = _apply_layers(full, spec)
    state: dict[str, torch.Tensor] = {}
    for mname, module in net.named_modules():
        entry = spec.layers.get(mname)
        for key, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            full_key = f"{mname}.{key}" if mname else key
            try:
                state[full_key] = _sliced(module, entry, key, tsd[full_key]).detach().clone()
            except (IndexError, RuntimeError) as err:
                raise CheckpointError(f"cannot slice teacher tensor {full_key!r} to the spec: {err}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"teacher weights do not fit the spec's shapes: {err}") from None
    p = next(iter(teacher.parameters()), None)
    if p is not None:
        net.to(p.device)
    net.train(teacher.training)
    return net


__all__ = ["build_from_spec", "inherit_from_teacher"]


SUBNET_FILE = "subnet.json"
NETWORK_FILES = {"generator": "generator.pt", "discriminator": "discriminator.pt"}
#: spec files of a saved candidate (the export keeps the specs inside subnet.json instead)
SPEC_FILES = {"generator": "generator_spec.json", "discriminator": "discriminator_spec.json"}


def load_subnet(folder: str | Path) -> tuple[nn.Module, nn.Module]:
    """Rebuild an exported pruned pair in plain PyTorch (no torch-pruning, no pickles).

    Reads ``subnet.json`` (written by ``collabprune export``) and the ``generator.pt`` /
    ``discriminator.pt`` state dicts beside it (``torch.load(weights_only=True)``).

    :param folder: the export folder.
    :returns: ``(generator, discriminator)`` in eval mode on the CPU; the generator maps
        (B, input_nc, H, W) -> (B, output_nc, H, W) in [-1, 1].
    :raises CheckpointError: a missing file, an unknown schema, or weights that do not fit the spec.
    """
    import json

    folder = Path(folder)
    meta_path = folder / SUBNET_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: not found (is {folder} a collabprune export?)")
    meta = json.loads(meta_path.read_text())
    specs = {}
    for role in NETWORK_FILES:
        if role not in meta or "spec" not in meta[role]:
            raise CheckpointError(f"{meta_path}: no '{role}.spec' entry")
        specs[role] = SubnetSpec.from_dict(meta[role]["spec"])
    return _load_pair(folder, specs)


def load_candidate(folder: str | Path) -> tuple[nn.Module, nn.Module]:
    """Rebuild a pruned pair saved by the evaluator or the final fine-tuning (a candidate folder).

    A candidate folder holds the :data:`SPEC_FILES` (one :class:`SubnetSpec` JSON per network) beside
    the :data:`NETWORK_FILES` state dicts; an export (:func:`load_subnet`) keeps the specs in
    ``subnet.json`` instead.

    :param folder: e.g. ``RUN_DIR/candidates/r00012_s0``, ``RUN_DIR/final``, ``RUN_DIR/final_uniform``.
    :returns: ``(generator, discriminator)`` in eval mode on the CPU; the generator maps
        (B, input_nc, H, W) -> (B, output_nc, H, W) in [-1, 1].
    :raises CheckpointError: a missing or unreadable spec or weight file, or weights that do not fit the spec.
    """
    folder = Path(folder)
    specs = {}
    for role, name in SPEC_FILES.items():
        spec_path = folder / name
        if not spec_path.is_file():
            raise CheckpointError(f"{spec_path}: not found (is {folder} a saved candidate?)")
        try:
            specs[role] = SubnetSpec.from_json(spec_path.read_text())
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{spec_path}: not a sub-network spec ({err})") from None
    return _load_pair(folder, specs)


def _load_pair(folder: Path, specs: dict[str, SubnetSpec]) -> tuple[nn.Module, nn.Module]:
    """Build each network of ``specs`` and load its :data:`NETWORK_FILES` state dict from ``folder``
    (strict); ``(generator, discriminator)`` in eval mode."""
    from collabprune.models.loading import load_state_dict_strict, read_state_dict

    nets = []
    for role, weights in NETWORK_FILES.items():
        net = build_from_spec(specs[role])
        load_state_dict_strict(net, read_state_dict(folder / weights), str(folder / weights))
        nets.append(net.eval())
    return nets[0], nets[1]
