"""pix2pix / CycleGAN networks, module-for-module compatible with the public
pytorch-CycleGAN-and-pix2pix ``models/networks.py`` (Isola et al. 2017; Zhu et al. 2017).

The module tree, parameter names, the ``use_bias`` rule and the norm choices are the upstream ones,
so released ``latest_net_G.pth`` files load with ``strict=True``. Two additions that change no
parameter: every activation takes ``inplace`` (``False`` for anything traced for pruning), and
``NLayerDiscriminator.features`` returns the penultimate activations.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]

GENERATORS = ("unet_256", "unet_128", "resnet_9blocks", "resnet_6blocks")


class Identity(nn.Module):
    """A no-op layer (upstream's ``norm='none'``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def get_norm_layer(norm_type: str = "instance") -> NormLayer:
    """Norm layer factory with upstream semantics.

    ``batch``: affine BatchNorm2d with running stats; ``instance``: InstanceNorm2d without affine
    parameters or running stats; ``none``: :class:`Identity`.

    :param norm_type: ``batch`` | ``instance`` | ``none``.
    :raises ValueError: for any other name.
    """
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "none":
        return lambda num_features: Identity()
    raise ValueError(f"norm layer {norm_type!r} is not one of batch, instance, none")


def uses_bias(norm_layer: NormLayer) -> bool:
    """Upstream's rule: convolutions before a norm carry a bias only when the norm is InstanceNorm2d."""
    if isinstance(norm_layer, functools.partial):
        return norm_layer.func == nn.InstanceNorm2d
    return norm_layer == nn.InstanceNorm2d


class ResnetBlock(nn.Module):
    """Residual block: (pad, conv3x3, norm, ReLU, [dropout], pad, conv3x3, norm) + identity.

    Shape: (B, dim, H, W) -> (B, dim, H, W).

    :param dim: channels of the residual stream.
    :param padding_type: ``reflect`` | ``replicate`` | ``zero``.
    :param norm_layer: norm factory from :func:`get_norm_layer`.
    :param use_dropout: add Dropout(0.5) between the two convolutions.
    :param use_bias: bias in the convolutions (see :func:`uses_bias`).
    :param inplace: in-place ReLU (``False`` for tracing).
    """

    def __init__(
        self,
        dim: int,
        padding_type: str,
        norm_layer: NormLayer,
        use_dropout: bool,
        use_bias: bool,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout, use_bias, inplace)

    @staticmethod
    def _padding(padding_type: str) -> tuple[list[nn.Module], int]:
        if padding_type == "reflect":
            return [nn.ReflectionPad2d(1)], 0
        if padding_type == "replicate":
            return [nn.ReplicationPad2d(1)], 0
        if padding_type == "zero":
            return [], 1
        raise NotImplementedError(f"padding {padding_type!r} is not implemented")

    def build_conv_block(
        self,
        dim: int,
        padding_type: str,
        norm_layer: NormLayer,
        use_dropout: bool,
        use_bias: bool,
        inplace: bool = True,
    ) -> nn.Sequential:
        """The block body, with upstream's layer order and indices."""
        pad, p = self._padding(padding_type)
        layers: list[nn.Module] = list(pad)
        layers += [
            nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias),
            norm_layer(dim),
            nn.ReLU(inplace),
        ]
        if use_dropout:
            layers += [nn.Dropout(0.5)]
        pad, p = self._padding(padding_type)
        layers += list(pad)
        layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResNet generator (Johnson et al. 2016; CycleGAN's ``resnet_9blocks``/``resnet_6blocks``).

    Shape: (B, input_nc, H, W) -> (B, output_nc, H, W), H and W multiples of 4, output in [-1, 1].

    :param input_nc: input channels.
    :param output_nc: output channels.
    :param ngf: filters of the first conv.
    :param norm_layer: norm factory from :func:`get_norm_layer`.
    :param use_dropout: dropout inside the residual blocks.
    :param n_blocks: residual blocks (9 or 6 upstream).
    :param padding_type: padding inside the residual blocks.
    :param inplace: in-place ReLUs (``False`` for tracing).
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
        use_dropout: bool = False,
        n_blocks: int = 6,
        padding_type: str = "reflect",
        inplace: bool = True,
    ) -> None:
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        super().__init__()
        use_bias = uses_bias(norm_layer)
        model: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(inplace),
        ]
        n_down = 2
        for i in range(n_down):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(ngf * mult * 2),
                nn.ReLU(inplace),
            ]
        mult = 2**n_down
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * mult, padding_type, norm_layer, use_dropout, use_bias, inplace)]
        for i in range(n_down):
            mult = 2 ** (n_down - i)
            model += [
                nn.ConvTranspose2d(
                    ngf * mult,
                    ngf * mult // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=use_bias,
                ),
                norm_layer(ngf * mult // 2),
                nn.ReLU(inplace),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down(x) -> submodule -> up, with the skip ``cat([x, up], 1)``.

    Shape: (B, input_nc, H, W) -> (B, input_nc + outer_nc, H, W), or (B, outer_nc, H, W) when
    outermost.

    :param outer_nc: channels this level's up-convolution produces.
    :param inner_nc: channels this level's down-convolution produces.
    :param input_nc: channels of this level's input (defaults to ``outer_nc``).
    :param submodule: the next-inner level (``None`` when innermost).
    :param outermost: the outermost level (no norm, Tanh output, no skip).
    :param innermost: the innermost level (no submodule).
    :param norm_layer: norm factory from :func:`get_norm_layer`.
    :param use_dropout: Dropout(0.5) after the up path (inner levels of unet_256).
    :param inplace: in-place activations (``False`` for tracing).
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        use_dropout: bool = False,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = uses_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, inplace)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(inplace)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(
                inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias
            )
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net generator of pix2pix (Isola et al. 2017), built from the innermost level outwards.

    Shape: (B, input_nc, H, W) -> (B, output_nc, H, W), H and W multiples of ``2**num_downs``,
    output in [-1, 1].

    :param input_nc: input channels.
    :param output_nc: output channels.
    :param num_downs: down-samplings (8 for unet_256, 7 for unet_128).
    :param ngf: filters of the outermost down-convolution.
    :param norm_layer: norm factory from :func:`get_norm_layer`.
    :param use_dropout: dropout in the ``num_downs - 5`` inner ngf*8 levels.
    :param inplace: in-place activations (``False`` for tracing).
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int,
        ngf: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
        use_dropout: bool = False,
        inplace: bool = True,
    ) -> None:
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        super().__init__()
        kw = dict(norm_layer=norm_layer, inplace=inplace)
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, **kw)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout, **kw)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, **kw)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, **kw)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, **kw)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, **kw
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix ``basic`` = 3 layers; 70x70 receptive field).

    Shape: (B, input_nc, H, W) -> (B, 1, H', W') patch logits. For pix2pix, ``input_nc`` is
    ``input_nc + output_nc`` of the generator (the conditional D sees cat(A, B)).

    :param input_nc: input channels.
    :param ndf: filters of the first conv.
    :param n_layers: stride-2 conv layers.
    :param norm_layer: norm factory from :func:`get_norm_layer`.
    :param inplace: in-place LeakyReLUs (``False`` for tracing).
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: NormLayer = nn.BatchNorm2d,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        use_bias = uses_bias(norm_layer)
        kw, padw = 4, 1
        seq: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, inplace),
        ]
        mult, mult_prev = 1, 1
        for n in range(1, n_layers):
            mult_prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * mult_prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, inplace),
            ]
        mult_prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * mult_prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * mult),
            nn.LeakyReLU(0.2, inplace),
        ]
        seq += [nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (everything but the 1-channel head): (B, C, H', W')."""
        return self.model[:-1](x)


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """Upstream weight init: conv weights ~ N(0, gain) (or xavier/kaiming/orthogonal), biases 0,
    BatchNorm weights ~ N(1, gain), biases 0.

    :raises ValueError: unknown ``init_type``.
    """
    if init_type not in ("normal", "xavier", "kaiming", "orthogonal"):
        raise ValueError(f"init type {init_type!r} is not one of normal, xavier, kaiming, orthogonal")

    def init_func(m: nn.Module) -> None:
        name = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            if init_type == "normal":
                nn.init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight.data, gain=init_gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif "BatchNorm2d" in name and m.weight is not None:
            nn.init.normal_(m.weight.data, 1.0, init_gain)
            nn.init.constant_(m.bias.data, 0.0)

    net.apply(init_func)
    return net


def define_G(
    input_nc: int,
    output_nc: int,
    ngf: int,
    net_g: str,
    norm: str = "batch",
    use_dropout: bool = False,
    inplace: bool = True,
) -> nn.Module:
    """Build a generator by upstream name (``--netG``), without weight init.

    :param net_g: ``unet_256`` | ``unet_128`` | ``resnet_9blocks`` | ``resnet_6blocks``.
    :raises ValueError: unknown name.
    """
    norm_layer = get_norm_layer(norm)
    if net_g == "resnet_9blocks":
        return ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=9, inplace=inplace)
    if net_g == "resnet_6blocks":
        return ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=6, inplace=inplace)
    if net_g == "unet_128":
        return UnetGenerator(input_nc, output_nc, 7, ngf, norm_layer, use_dropout, inplace=inplace)
    if net_g == "unet_256":
        return UnetGenerator(input_nc, output_nc, 8, ngf, norm_layer, use_dropout, inplace=inplace)
    raise ValueError(f"generator {net_g!r} is not one of {', '.join(GENERATORS)}")


def define_D(
    input_nc: int, ndf: int, net_d: str, n_layers_d: int = 3, norm: str = "batch", inplace: bool = True
) -> NLayerDiscriminator:
    """Build a PatchGAN discriminator by upstream name (``--netD basic|n_layers``), without init.

    :raises ValueError: unknown name.
    """
    norm_layer = get_norm_layer(norm)
    if net_d == "basic":
        return NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=norm_layer, inplace=inplace)
    if net_d == "n_layers":
        return NLayerDiscriminator(input_nc, ndf, n_layers_d, norm_layer=norm_layer, inplace=inplace)
    raise ValueError(f"discriminator {net_d!r} is not one of basic, n_layers")
