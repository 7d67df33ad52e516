"""SubnetSpec: a pruned sub-network as plain JSON data (DESIGN.md §3).

A spec names the builder (``define_G``/``define_D``) and its keyword arguments, the kept channels of
every prunable group, and the shape of every layer of the pruned network, with the kept indices of
each layer's input/output dimension relative to the teacher. That is enough to rebuild the pruned
network from our own classes (:func:`collabprune.models.subnet.build_from_spec`) and to slice a
teacher's weights into it (:func:`collabprune.models.subnet.inherit_from_teacher`), without
torch-pruning and without pickles. This module imports neither.

JSON layout (``schema_version`` 1)::

    {"schema_version": 1, "family": "unet"|"resnet"|"nlayer", "builder": "define_G"|"define_D",
     "kwargs": {...define_G/define_D keyword arguments, including "inplace"...},
     "groups": [{"name": str, "channels": int, "kept": int, "kept_indices": [int, ...]}, ...],
     "layers": {
        "<conv name>": {"type": "Conv2d"|"ConvTranspose2d", "in": int, "out": int,
                        "in_idx": [int, ...] | null, "out_idx": [int, ...] | null},
        "<norm name>": {"type": "BatchNorm2d"|"InstanceNorm2d", "num_features": int,
                        "idx": [int, ...]}}}

Every convolution is listed; a norm is listed only when its size changed. ``in_idx``/``out_idx``/
``idx`` are the teacher's channel indices kept in that dimension, ascending (``null`` = all kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from collabprune.errors import CheckpointError

SCHEMA_VERSION = 1
FAMILIES = ("unet", "resnet", "nlayer")
BUILDERS = ("define_G", "define_D")
CONV_TYPE_NAMES = ("Conv2d", "ConvTranspose2d")
NORM_TYPE_NAMES = ("BatchNorm2d", "InstanceNorm2d")


@dataclass
class SubnetSpec:
    """A pruned sub-network as plain data (see the module docstring for the JSON layout).

    :param family: ``unet`` | ``resnet`` | ``nlayer``.
    :param builder: ``define_G`` | ``define_D``.
    :param kwargs: keyword arguments of the builder (from ``generator_kwargs``/
        ``discriminator_kwargs`` or inferred from the network), including ``inplace``.
    :param groups: per prunable group (network order): ``name``, ``channels`` (original),
        ``kept`` (int) and ``kept_indices`` (ascending teacher indices, ``len == kept``).
    :param layers: per layer of the pruned network: its shape and kept indices.
    :param schema_version: layout version of this data.
    """

    family: str
    builder: str
    kwargs: dict[str, Any]
    groups: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def kept(self) -> list[int]:
        """Kept channels per group, network order."""
        return [int(g["kept"]) for g in self.groups]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (a deep copy)."""
        return json.loads(json.dumps({
            "schema_version": self.schema_version,
            "family": self.family,
            "builder": self.builder,
            "kwargs": self.kwargs,
            "groups": self.groups,
            "layers": self.layers,
        }))

    def to_json(self, indent: int | None = None) -> str:
        """The spec as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SubnetSpec":
        """Validate and load plain data.

        :raises CheckpointError: missing/ill-typed fields or an unknown schema version.
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(f"sub-network spec must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CheckpointError(f"sub-network spec has schema_version={version!r}; this version reads {SCHEMA_VERSION}")
        for key, typ in (("family", str), ("builder", str), ("kwargs", dict), ("groups", list), ("layers", dict)):
            if not isinstance(data.get(key), typ):
                raise CheckpointError(f"sub-network spec field {key!r} is missing or not a {typ.__name__}")
        if data["family"] not in FAMILIES:
            raise CheckpointError(f"sub-network spec family {data['family']!r} is not one of {', '.join(FAMILIES)}")
        if data["builder"] not in BUILDERS:
            raise CheckpointError(f"sub-network spec builder {data['builder']!r} is not one of {', '.join(BUILDERS)}")
        for i, g in enumerate(data["groups"]):
            if not isinstance(g, Mapping) or not {"name", "channels", "kept", "kept_indices"} <= set(g):
                raise CheckpointError(f"sub-network spec group {i} needs name, channels, kept, kept_indices")
            if len(g["kept_indices"]) != g["kept"]:
                raise CheckpointError(f"sub-network spec group {i} ({g['name']}): kept != len(kept_indices)")
        for name, entry in data["layers"].items():
            t = entry.get("type") if isinstance(entry, Mapping) else None
            need = {"in", "out"} if t in CONV_TYPE_NAMES else {"num_features"} if t in NORM_TYPE_NAMES else None
            if need is None or not need <= set(entry):
                raise CheckpointError(f"sub-network spec layer {name!r} is malformed: {entry!r}")
        return cls(
            family=data["family"],
            builder=data["builder"],
            kwargs=dict(data["kwargs"]),
            groups=[dict(g) for g in data["groups"]],
            layers={k: dict(v) for k, v in data["layers"].items()},
            schema_version=int(version),
        )

    @classmethod
    def from_json(cls, text: str) -> "SubnetSpec":
        """Parse a JSON string.

        :raises CheckpointError: not JSON, or invalid content (see :meth:`from_dict`).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"sub-network spec is not valid JSON: {err}") from None
        return cls.from_dict(data)


def _norm_name(model: nn.Module) -> str:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            return "batch"
        if isinstance(m, nn.InstanceNorm2d):
            return "instance"
    return "none"


def _inplace(model: nn.Module) -> bool:
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            return bool(m.inplace)
    return False


def infer_builder(model: nn.Module) -> tuple[str, str, dict[str, Any]]:
    """``(family, builder, kwargs)`` that rebuild ``model``'s architecture with define_G/define_D.

    :param model: an UnetGenerator (unet_256/unet_128), ResnetGenerator (9/6 blocks, reflect
        padding) or NLayerDiscriminator.
    :raises ValueError: any other network, or one define_G/define_D cannot build.
    """
    from collabprune.models.networks import NLayerDiscriminator, ResnetBlock, ResnetGenerator, UnetGenerator

    norm = _norm_name(model)
    inplace = _inplace(model)
    dropout = any(isinstance(m, nn.Dropout) for m in model.modules())
    if isinstance(model, UnetGenerator):
        outer = model.model
        levels = sum(1 for m in model.modules() if type(m).__name__ == "UnetSkipConnectionBlock")
        net_g = {8: "unet_256", 7: "unet_128"}.get(levels)
        if net_g is None:
            raise ValueError(f"U-Net with {levels} levels has no define_G name (unet_256: 8, unet_128: 7)")
        down, up = outer.model[0], outer.model[-2]
        kwargs = dict(input_nc=down.in_channels, output_nc=up.out_channels, ngf=down.out_channels,
                      net_g=net_g, norm=norm, use_dropout=dropout, inplace=inplace)
        return "unet", "define_G", kwargs
    if isinstance(model, ResnetGenerator):
        blocks = [m for m in model.modules() if isinstance(m, ResnetBlock)]
        net_g = {9: "resnet_9blocks", 6: "resnet_6blocks"}.get(len(blocks))
        if net_g is None:
            raise ValueError(f"ResNet with {len(blocks)} blocks has no define_G name (9 or 6)")
        if not all(isinstance(b.conv_block[0], nn.ReflectionPad2d) for b in blocks):
            raise ValueError("define_G builds ResNet blocks with reflect padding only")
        first, last = model.model[1], model.model[-2]
        kwargs = dict(input_nc=first.in_channels, output_nc=last.out_channels, ngf=first.out_channels,
                      net_g=net_g, norm=norm, use_dropout=dropout, inplace=inplace)
        return "resnet", "define_G", kwargs
    if isinstance(model, NLayerDiscriminator):
        convs = [m for m in model.model if isinstance(m, nn.Conv2d)]
        n_layers = len(convs) - 2
        kwargs = dict(input_nc=convs[0].in_channels, ndf=convs[0].out_channels,
                      net_d="basic" if n_layers == 3 else "n_layers", n_layers_d=n_layers,
                      norm=norm, inplace=inplace)
        return "nlayer", "define_D", kwargs
    raise ValueError(f"cannot describe a {type(model).__name__}: expected UnetGenerator, ResnetGenerator or NLayerDiscriminator")


__all__ = ["SCHEMA_VERSION", "SubnetSpec", "infer_builder"]
