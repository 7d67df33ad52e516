"""Checkpoint import for upstream-format ``*_net_G.pth`` / ``*_net_D.pth`` state dicts (DESIGN.md §2)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collabprune.errors import CheckpointError
from collabprune.models.networks import define_D, define_G


def _drop_instance_norm_stats(state_dict: dict[str, Any], net: nn.Module) -> list[str]:
    """Remove InstanceNorm running stats that the module does not track (old PyTorch checkpoints).

    This is what upstream's ``__patch_instance_norm_state_dict`` does: keys ``running_mean`` /
    ``running_var`` of an InstanceNorm without running stats, and its ``num_batches_tracked``.

    :returns: the removed keys.
    """
    modules = dict(net.named_modules())
    removed = []
    for key in list(state_dict):
        owner, _, attr = key.rpartition(".")
        module = modules.get(owner)
        if module is None or not module.__class__.__name__.startswith("InstanceNorm"):
            continue
        if attr == "num_batches_tracked" or (attr in ("running_mean", "running_var") and getattr(module, attr) is None):
            state_dict.pop(key)
            removed.append(key)
    return removed


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` (no pickled code).

    A ``module.`` prefix (DataParallel) and a ``_metadata`` attribute are removed.

    :raises CheckpointError: the file is missing, unreadable, or not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise CheckpointError(f"{p}: not a readable weights-only checkpoint ({type(err).__name__})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_strict(net: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state_dict`` into ``net`` with ``strict=True`` after the InstanceNorm clean-up.

    :param source: where the state dict came from, for the error message.
    :raises CheckpointError: naming the first missing / unexpected keys, or the first shape mismatch.
    """
    state_dict = dict(state_dict)
    _drop_instance_norm_stats(state_dict, net)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(
            f"{source}: does not match the network: {'; '.join(parts)}",
            hint="check model.net_g / net_d / norm / ngf against the checkpoint",
        )
    for key, value in state_dict.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, the network expects "
                f"{tuple(expected[key].shape)}",
                hint="check model.ngf / ndf / input_nc / output_nc",
            )
    net.load_state_dict(state_dict, strict=True)
    return net


def load_generator(
    path: str | os.PathLike[str],
    net_g: str = "unet_256",
    norm: str = "batch",
    ngf: int = 64,
    input_nc: int = 3,
    output_nc: int = 3,
    use_dropout: bool = False,
    inplace: bool = True,
) -> nn.Module:
    """Build a generator by upstream name and load an upstream ``latest_net_G.pth`` into it.

    :param path: the state-dict file.
    :param net_g: ``unet_256`` | ``unet_128`` | ``resnet_9blocks`` | ``resnet_6blocks``.
    :param norm: ``batch`` | ``instance`` | ``none`` (upstream ``--norm``).
    :returns: the generator in eval mode, on the CPU.
    :raises CheckpointError: missing/unreadable file or mismatched keys (first keys named).
    """
    net = define_G(input_nc, output_nc, ngf, net_g, norm, use_dropout, inplace=inplace)
    load_state_dict_strict(net, read_state_dict(path), str(path))
    return net.eval()


def load_discriminator(
    path: str | os.PathLike[str],
    net_d: str = "basic",
    n_layers_d: int = 3,
    norm: str = "batch",
    ndf: int = 64,
    input_nc: int = 6,
    inplace: bool = True,
) -> nn.Module:
    """Build a PatchGAN discriminator and load a ``latest_net_D.pth`` into it.

    :param input_nc: D input channels (``input_nc + output_nc`` of G for pix2pix).
    :returns: the discriminator in eval mode, on the CPU.
    :raises CheckpointError: missing/unreadable file or mismatched keys (first keys named).
    """
    net = define_D(input_nc, ndf, net_d, n_layers_d, norm, inplace=inplace)
    load_state_dict_strict(net, read_state_dict(path), str(path))
    return net.eval()
