"""pix2pix / CycleGAN networks (upstream-compatible), checkpoint import, and builders from a config."""

from __future__ import annotations

from torch import nn

from collabprune.config import RunConfig
from collabprune.models.family import FAMILIES, Family, family_of
from collabprune.models.subnet import build_from_spec, inherit_from_teacher, load_candidate, load_subnet
from collabprune.models.loading import load_discriminator, load_generator, load_state_dict_strict, read_state_dict
from collabprune.models.networks import (
    GENERATORS,
    NLayerDiscriminator,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipConnectionBlock,
    define_D,
    define_G,
    get_norm_layer,
    init_weights,
)


def generator_kwargs(cfg: RunConfig, inplace: bool = True) -> dict:
    """Keyword arguments of :func:`define_G` for a run config (plain data, stored in a SubnetSpec)."""
    m = cfg.model
    return dict(
        input_nc=cfg.data.input_nc,
        output_nc=cfg.data.output_nc,
        ngf=m.ngf,
        net_g=m.net_g,
        norm=m.norm,
        use_dropout=m.use_dropout,
        inplace=inplace,
    )


def discriminator_kwargs(cfg: RunConfig, inplace: bool = True) -> dict:
    """Keyword arguments of :func:`define_D` for a run config: the pix2pix conditional D sees
    ``input_nc + output_nc`` channels, CycleGAN's D_B ``output_nc`` (:class:`Family`)."""
    m = cfg.model
    return dict(
        input_nc=family_of(cfg).d_input_nc(cfg.data.input_nc, cfg.data.output_nc),
        ndf=m.ndf,
        net_d=m.net_d,
        n_layers_d=m.n_layers_d,
        norm=m.norm,
        inplace=inplace,
    )


def build_generator(cfg: RunConfig, inplace: bool = True) -> nn.Module:
    """An untrained, upstream-initialised generator for ``cfg`` (N(0, 0.02) init)."""
    return init_weights(define_G(**generator_kwargs(cfg, inplace)))


def build_discriminator(cfg: RunConfig, inplace: bool = True) -> NLayerDiscriminator:
    """An untrained, upstream-initialised PatchGAN discriminator for ``cfg`` (conditional for pix2pix)."""
    return init_weights(define_D(**discriminator_kwargs(cfg, inplace)))


__all__ = [
    "FAMILIES",
    "Family",
    "family_of",
    "GENERATORS",
    "NLayerDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetGenerator",
    "UnetSkipConnectionBlock",
    "build_discriminator",
    "build_from_spec",
    "inherit_from_teacher",
    "load_candidate",
    "load_subnet",
    "build_generator",
    "define_D",
    "define_G",
    "discriminator_kwargs",
    "generator_kwargs",
    "get_norm_layer",
    "init_weights",
    "load_discriminator",
    "load_generator",
    "load_state_dict_strict",
    "read_state_dict",
]
