"""CycleGAN teacher training with the upstream recipe (Zhu et al. 2017, §3-§4; upstream
``models/cycle_gan_model.py``).

Four networks, named as upstream's code names them (the paper's names in brackets):

- ``G_A`` (G): A -> B, the network that is compressed; ``G_B`` (F): B -> A;
- ``D_A`` (D_Y): G_A's adversary, judges B images (real B vs ``G_A(A)``);
- ``D_B`` (D_X): G_B's adversary, judges A images (real A vs ``G_B(B)``).

Generator loss: GAN loss of ``teacher.gan_mode`` (``lsgan`` in the CycleGAN configs, as upstream's
default) for both generators, plus the cycle-consistency L1 ``|G_B(G_A(A)) - A|`` and
``|G_A(G_B(B)) - B|`` each weighted ``lambda_cycle``, plus the identity L1 ``|G_A(B) - B|`` and
``|G_B(A) - A|`` each weighted ``lambda_identity * lambda_cycle`` (only when ``input_nc == output_nc``:
otherwise a generator cannot take the other domain's images). Discriminator loss:
``0.5 * (real + fake)`` per D, where the fakes come from an :class:`ImagePool` of ``pool_size`` earlier
generated images. One Adam(lr, betas (beta1, 0.999)) over both Gs, one over both Ds; per step G first,
then D (upstream order); constant learning rate for ``n_epochs`` then linear decay to zero over
``n_epochs_decay`` (:func:`~collabprune.teacher.linear_decay`).

Checkpoints use upstream's file names (``latest_net_G_A.pth``, ``latest_net_G_B.pth``,
``latest_net_D_A.pth``, ``latest_net_D_B.pth``, plain state dicts), so upstream's ``test.py`` can read
them and :mod:`collabprune.teacher_checkpoints` finds G_A and D_A; ``latest_train_state.pth`` adds the
optimisers and the epoch so training resumes where it stopped (the image pools restart empty then,
as upstream's ``--continue_train`` does).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from collabprune.config import RunConfig
from collabprune.data import make_dataset, train_split
from collabprune.io import atomic_torch_save, atomic_write_json
from collabprune.metrics.eval_net import fd_eval, load_or_train_eval_net
from collabprune.models import (
    build_discriminator,
    build_generator,
    define_D,
    define_G,
    discriminator_kwargs,
    generator_kwargs,
    init_weights,
    load_state_dict_strict,
    read_state_dict,
)
from collabprune.objectives.losses import GANLoss
from collabprune.runtime import resolve_device, seed_everything
from collabprune.teacher import GRID_FILE, REPORT_FILE, STATE_FILE, linear_decay, run_epochs, save_sample_grid
from collabprune.teacher_checkpoints import D_A_FILE, D_B_FILE, G_A_FILE, G_B_FILE

__all__ = ["CycleGANNets", "CycleGANStep", "ImagePool", "build_cyclegan_nets", "cyclegan_test_report",
           "train_cyclegan_teacher"]

#: Network name -> upstream checkpoint file.
NET_FILES: dict[str, str] = {"g_a": G_A_FILE, "g_b": G_B_FILE, "d_a": D_A_FILE, "d_b": D_B_FILE}


class ImagePool:
    """A buffer of earlier generated images shown to a discriminator (Shrivastava et al. 2017;
    upstream ``util/image_pool.py``), so D is trained on a history of G's outputs, not only its latest.

    :meth:`query` takes a batch of generated images, one image at a time: while the pool holds fewer
    than ``pool_size`` images, the image is stored and returned; once it is full, with probability 1/2
    a stored image (chosen uniformly) is returned and replaced by the new one, else the new image is
    returned. ``pool_size == 0`` returns the batch unchanged. The coin and the slot are drawn from a
    private ``random.Random(seed)``, so a seeded run is reproducible.

    :param pool_size: images kept (upstream ``--pool_size``, 50); 0 disables the pool.
    :param seed: seed of the draws.
    :raises ValueError: ``pool_size < 0``.
    """

    def __init__(self, pool_size: int, seed: int = 0) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size={pool_size}: must be >= 0")
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """The images to show the discriminator for the generated batch ``images``.

        :param images: generated images (B, C, H, W); only their values are stored (detached).
        :returns: (B, C, H, W): ``images`` itself when ``pool_size == 0``, else a detached mix of
            ``images`` and earlier stored images.
        """
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0).clone()
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif self._rng.random() > 0.5:
                slot = self._rng.randint(0, self.pool_size - 1)
                out.append(self.images[slot])
                self.images[slot] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


@dataclass
class CycleGANNets:
    """The four CycleGAN networks (upstream names; module docstring).

    :param g_a: G_A, (B, input_nc, H, W) -> (B, output_nc, H, W).
    :param g_b: G_B, (B, output_nc, H, W) -> (B, input_nc, H, W).
    :param d_a: D_A, B images (B, output_nc, H, W) -> (B, 1, H', W') logits.
    :param d_b: D_B, A images (B, input_nc, H, W) -> (B, 1, H', W') logits.
    """

    g_a: nn.Module
    g_b: nn.Module
    d_a: nn.Module
    d_b: nn.Module

    def named(self) -> dict[str, nn.Module]:
        """``{"g_a": G_A, "g_b": G_B, "d_a": D_A, "d_b": D_B}``."""
        return {"g_a": self.g_a, "g_b": self.g_b, "d_a": self.d_a, "d_b": self.d_b}

    def generators(self) -> list[nn.Parameter]:
        """Parameters of G_A then G_B (one optimiser, as upstream)."""
        return [*self.g_a.parameters(), *self.g_b.parameters()]

    def discriminators(self) -> list[nn.Parameter]:
        """Parameters of D_A then D_B (one optimiser, as upstream)."""
        return [*self.d_a.parameters(), *self.d_b.parameters()]


def build_cyclegan_nets(cfg: RunConfig) -> CycleGANNets:
    """Untrained, upstream-initialised CycleGAN networks for ``cfg``, built in upstream's order.

    G_A is :func:`~collabprune.models.build_generator` (so its checkpoint loads into it) and D_A
    :func:`~collabprune.models.build_discriminator` (the unconditional D on ``output_nc`` channels);
    G_B and D_B are the same architectures with the domains swapped.
    """
    g_a = build_generator(cfg)
    g_kw = generator_kwargs(cfg)
    g_b = init_weights(define_G(**{**g_kw, "input_nc": g_kw["output_nc"], "output_nc": g_kw["input_nc"]}))
    d_a = build_discriminator(cfg)
    d_b = init_weights(define_D(**{**discriminator_kwargs(cfg), "input_nc": cfg.data.input_nc}))
    return CycleGANNets(g_a=g_a, g_b=g_b, d_a=d_a, d_b=d_b)


def _requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


@dataclass
class CycleGANStep:
    """One CycleGAN optimisation step (upstream ``optimize_parameters``): both generators, then both
    discriminators.

    :param nets: the four networks.
    :param opt_g: Adam over G_A and G_B.
    :param opt_d: Adam over D_A and D_B.
    :param gan_loss: :class:`~collabprune.objectives.GANLoss`.
    :param lambda_cycle: weight of each cycle L1 (upstream ``lambda_A`` = ``lambda_B``).
    :param lambda_identity: identity weight relative to ``lambda_cycle``; 0 turns it off.
    :param pool_fake_b: pool of G_A's outputs shown to D_A.
    :param pool_fake_a: pool of G_B's outputs shown to D_B.
    """

    nets: CycleGANNets
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    gan_loss: nn.Module
    lambda_cycle: float
    lambda_identity: float
    pool_fake_b: ImagePool
    pool_fake_a: ImagePool

    def _d_loss(self, net_d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """``0.5 * (GAN(D(real), real) + GAN(D(fake), fake))``, ``fake`` detached."""
        return 0.5 * (self.gan_loss(net_d(real), True) + self.gan_loss(net_d(fake.detach()), False))

    def __call__(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, float]:
        """Run one step on an unpaired batch.

        :param real_a: A images (B, input_nc, H, W) in [-1, 1].
        :param real_b: B images (B', output_nc, H, W) in [-1, 1], not the pairs of ``real_a``.
        :returns: loss values ``g_a``, ``g_b`` (GAN), ``cycle_a``, ``cycle_b``, ``idt_a``, ``idt_b``
            (weighted, as upstream reports them), ``d_a``, ``d_b``.
        """
        n = self.nets
        fake_b = n.g_a(real_a)
        rec_a = n.g_b(fake_b)
        fake_a = n.g_b(real_b)
        rec_b = n.g_a(fake_a)
        # Generators (Ds frozen).
        _requires_grad([n.d_a, n.d_b], False)
        self.opt_g.zero_grad(set_to_none=True)
        w_idt = self.lambda_identity * self.lambda_cycle
        zero = real_a.new_zeros(())
        idt_a = F.l1_loss(n.g_a(real_b), real_b) * w_idt if w_idt > 0 else zero
        idt_b = F.l1_loss(n.g_b(real_a), real_a) * w_idt if w_idt > 0 else zero
        g_a = self.gan_loss(n.d_a(fake_b), True)
        g_b = self.gan_loss(n.d_b(fake_a), True)
        cycle_a = F.l1_loss(rec_a, real_a) * self.lambda_cycle
        cycle_b = F.l1_loss(rec_b, real_b) * self.lambda_cycle
        (g_a + g_b + cycle_a + cycle_b + idt_a + idt_b).backward()
        self.opt_g.step()
        # Discriminators, on pooled fakes.
        _requires_grad([n.d_a, n.d_b], True)
        self.opt_d.zero_grad(set_to_none=True)
        d_a = self._d_loss(n.d_a, real_b, self.pool_fake_b.query(fake_b))
        d_b = self._d_loss(n.d_b, real_a, self.pool_fake_a.query(fake_a))
        (d_a + d_b).backward()
        self.opt_d.step()
        values = {"g_a": g_a, "g_b": g_b, "cycle_a": cycle_a, "cycle_b": cycle_b, "idt_a": idt_a, "idt_b": idt_b,
                  "d_a": d_a, "d_b": d_b}
        return {k: float(v.item()) for k, v in values.items()}


def _resume(out: Path, nets: CycleGANNets, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
            device: torch.device) -> int:
    """Load the saved networks and optimisers when ``out`` holds a complete CycleGAN training state.

    :returns: the epoch to start from (0 when there is nothing to resume).
    :raises CheckpointError: a saved network does not match the config.
    """
    if not (out / STATE_FILE).is_file() or not all((out / f).is_file() for f in NET_FILES.values()):
        return 0
    state = torch.load(out / STATE_FILE, map_location=device, weights_only=True)
    if state.get("family") != "cyclegan":  # a pix2pix state in the same folder: start afresh
        return 0
    for name, net in nets.named().items():
        path = out / NET_FILES[name]
        load_state_dict_strict(net, read_state_dict(path), str(path))
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    return int(state["epoch"])


def _save(out: Path, nets: CycleGANNets, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, epoch: int) -> None:
    """Write the four upstream-named state dicts, then the resume state (each atomically)."""
    for name, net in nets.named().items():
        atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / NET_FILES[name])
    atomic_torch_save({"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "epoch": epoch, "family": "cyclegan"},
                      out / STATE_FILE)


def _test_items(cfg: RunConfig) -> list[dict]:
    """The test split's items in eval mode (centre crop, no flip): item ``i`` holds A image
    ``i % len A`` and B image ``i % len B`` (unpaired)."""
    test = make_dataset(cfg.data, "test", train=False)
    return [test[i] for i in range(len(test))]


def _b_images(dataset: Dataset) -> torch.Tensor:
    """The B images (N, output_nc, H, W) in [-1, 1] of every item of ``dataset``."""
    return torch.stack([dataset[i]["B"] for i in range(len(dataset))])  # type: ignore[arg-type]


@torch.no_grad()
def _outputs(net_g: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 16) -> torch.Tensor:
    """``net_g`` in eval mode on ``images`` (N, C, H, W), in batches; (N, C_out, H, W) on the CPU."""
    was_training = net_g.training
    net_g.eval()
    out = torch.cat([net_g(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    net_g.train(was_training)
    return out


def cyclegan_test_report(net_g_a: nn.Module, cfg: RunConfig, device: torch.device, cache_dir: Path) -> dict[str, float | int | None]:
    """Held-out numbers of G_A on the test split: Frechet distances in the evaluation-only network
    (:mod:`collabprune.metrics.eval_net`, trained on the train split's B images and cached in
    ``cache_dir``; the same images and network as :class:`~collabprune.heldout.HeldoutEvaluator`).

    :param net_g_a: G_A, (B, input_nc, H, W) -> (B, output_nc, H, W).
    :param cfg: the run config.
    :param device: where G_A runs.
    :param cache_dir: folder of the evaluation network's cache.
    :returns: ``test_fd_eval`` = fd_eval(G_A(test A), test B); ``input_fd_eval`` = fd_eval(test A,
        test B), the distance of doing nothing (``None`` when A and B have different channel counts);
        ``test_images`` (test items).
    :raises DatasetError: the train or test split is missing.
    """
    items = _test_items(cfg)
    test_a = torch.stack([it["A"] for it in items])
    test_b = torch.stack([it["B"] for it in items])
    net = load_or_train_eval_net(_b_images(train_split(cfg.data, train=False)), cache_dir)
    same_space = cfg.data.input_nc == cfg.data.output_nc
    return {
        "test_fd_eval": fd_eval(net, _outputs(net_g_a, test_a, device), test_b),
        "input_fd_eval": fd_eval(net, test_a, test_b) if same_space else None,
        "test_images": len(items),
    }


def train_cyclegan_teacher(cfg: RunConfig, progress: bool = True, max_epochs: int | None = None) -> dict[str, float]:
    """Train (or resume training) the CycleGAN teacher of ``cfg`` and write its checkpoints.

    Files in ``cfg.teacher.checkpoint_dir``: ``latest_net_G_A.pth``, ``latest_net_G_B.pth``,
    ``latest_net_D_A.pth``, ``latest_net_D_B.pth`` (upstream names, state dicts; written every
    ``save_every_epochs`` epochs and at the end), ``latest_train_state.pth`` (optimisers, epoch),
    ``teacher_samples.png`` (:func:`~collabprune.teacher.save_sample_grid`: input A | G_A(A) | a real
    test B, unpaired),
    ``teacher_report.json`` and the evaluation network's cache ``eval_net/``.

    :param cfg: the run config (``data``, ``model``, ``teacher`` sections; ``model.family`` cyclegan,
        ``data.dataset_mode`` unaligned).
    :param progress: show a rich progress bar with the losses.
    :param max_epochs: stop after this many epochs in this call (for tests); the schedule is unchanged.
    :returns: the report: ``epochs_done``, ``epochs_total``, ``seconds`` (training time of this call),
        ``loss_*`` (mean losses of the last epoch of this call), ``identity_loss`` (whether it was
        used), ``test_fd_eval``, ``input_fd_eval``, ``test_images`` (:func:`cyclegan_test_report`),
        ``eval_seconds``.
    :raises DatasetError: the dataset is missing or unreadable.
    :raises CheckpointError: a checkpoint to resume from does not match the config.
    """
    tc = cfg.teacher
    out = Path(tc.checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.finetune.device)
    seed_everything(tc.seed)
    dataset = train_split(cfg.data, train=True)
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=True, drop_last=len(dataset) > tc.batch_size)
    nets = build_cyclegan_nets(cfg)
    for net in nets.named().values():
        net.to(device).train()
    opt_g = torch.optim.Adam(nets.generators(), lr=tc.lr, betas=(tc.beta1, 0.999))
    opt_d = torch.optim.Adam(nets.discriminators(), lr=tc.lr, betas=(tc.beta1, 0.999))
    start_epoch = _resume(out, nets, opt_g, opt_d, device)
    if start_epoch:
        torch.manual_seed(tc.seed + start_epoch)
    identity = tc.lambda_identity if cfg.data.input_nc == cfg.data.output_nc else 0.0
    step = CycleGANStep(nets, opt_g, opt_d, GANLoss(tc.gan_mode).to(device), tc.lambda_cycle, identity,
                        ImagePool(tc.pool_size, seed=tc.seed + start_epoch),
                        ImagePool(tc.pool_size, seed=tc.seed + start_epoch + 1))
    rule = linear_decay(tc.n_epochs, tc.n_epochs_decay)
    total_epochs = tc.n_epochs + tc.n_epochs_decay
    end_epoch = total_epochs if max_epochs is None else min(total_epochs, start_epoch + max_epochs)
    t0 = time.perf_counter()
    losses = run_epochs(
        loader, lambda item: step(item["A"].to(device), item["B"].to(device)), (opt_g, opt_d), tc.lr, rule,
        range(start_epoch, end_epoch), total_epochs, save=lambda e: _save(out, nets, opt_g, opt_d, e),
        save_every=tc.save_every_epochs, title="cyclegan teacher", progress=progress,
        describe=lambda v: (f"D_A {v['d_a']:.3f}  G_A {v['g_a']:.3f}  D_B {v['d_b']:.3f}  G_B {v['g_b']:.3f}  "
                            f"cyc {v['cycle_a'] + v['cycle_b']:.2f}"))
    report: dict = {"family": "cyclegan", "epochs_done": end_epoch, "epochs_total": total_epochs,
                    "seconds": time.perf_counter() - t0, "identity_loss": identity > 0}
    report.update({f"loss_{k}": v for k, v in losses.items()})
    t1 = time.perf_counter()
    report.update(cyclegan_test_report(nets.g_a, cfg, device, out / "eval_net"))
    report["eval_seconds"] = time.perf_counter() - t1
    save_sample_grid(nets.g_a, cfg, out / GRID_FILE, device)
    atomic_write_json(out / REPORT_FILE, report)
    return report
