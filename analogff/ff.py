"""Forward-Forward (Hinton 2022) on digital or analog layers, in one file.

Read top to bottom:

1. ``FFConfig``: every knob, with the default recipe.
2. Losses and their closed-form local errors ``d = dLoss/dz`` (Hinton's threshold loss, SymBa).
3. Label overlay, negative labels (random wrong / hard), random-shift augmentation.
4. Layers: ``DigitalLayer`` (``nn.Linear`` + a torch optimiser) and ``AnalogLayer`` (an
   ``analogff.crossbar.Crossbar`` + an update rule in the digital periphery). Both expose
   ``forward(x) -> z`` and ``apply_update(x, d, lr)``: W <- W - lr * d^T x, local.
5. ``FFNet``: normalisation between layers, goodness, one training step, prediction.
6. ``train_ff``: mini-batches, seeded RNG, metrics, atomic checkpoints, exact resume.

One training step on a mini-batch x with labels y (all layers updated, no gradient crosses a layer):

    neutral pass  (label pixels = 0.1)      -> softmax head trained on it; class probabilities
    y_neg         = a wrong label, random or drawn in proportion to those probabilities ("hard")
    for each layer, on [x with label y ; x with label y_neg]:
        z = W x_in (+b);  h = relu(z);  G = goodness(h)          (positive half, negative half)
        d = dLoss/dG * dG/dz        closed form, per unit and sample
        W <- W - lr d^T x_in       (rank-2B update: exactly what a crossbar does with pulses)
        x_in = normalise(h)        (length normalisation removes goodness; input is detached)

Everything runs under ``torch.no_grad()``: the algorithm needs no autograd at all.

Not implemented: the Trifecta's "overlapping updates" (each block's loss also updates the block
below). It sends an error through W^T, i.e. a transposed MVM on an analog array, which is exactly
what FF is meant to avoid here.

Operation counts: the net counts its digital work into ``net.counters`` (an
:class:`analogff.energy.OpCounts`) with the primitive costs of :mod:`analogff.accounting`, one call
beside each piece of work (``c += cost.relu(n)``): MACs of digital layers, the periphery (ReLU,
goodness, normalisation, local error, softmax head, optimiser state traffic by the one residency
rule). An analog layer's crossbar counts its own analog operations in ``xbar.counters``;
``net.total_counts()`` adds them up (training only; ``train_ff``'s evaluation goes to
``net.eval_counters``). ``accounting.ff_step_counts`` gives the same counts of a step analytically.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from analogff import accounting as cost
from analogff.energy import OpCounts, evaluation


# ---------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class FFConfig:
    """All Forward-Forward options. The defaults learn fast on MNIST (784-500-500: ~95 % after one
    epoch, ~98.5 % after 10); add ``shift=2`` and train 60 epochs for ~99 % (benchmarks/ff_mnist.py)."""

    loss: str = "symba"  #: "symba": softplus(alpha (G_neg - G_pos)) | "hinton": threshold loss
    alpha: float = 0.5  #: SymBa scale (SymBa's 4 is for a smaller goodness scale; on MNIST with
    #: the sum goodness 0.25-1 learns fastest, 4 saturates the loss)
    theta: float = 100.0  #: Hinton threshold, in the units of the goodness (sum: scale it with the width)
    goodness: str = "sum"  #: "sum" (Hinton) | "mean" of squared ReLU activities of a layer
    norm: str = "length"  #: between layers: "length" (Hinton) | "batch" (Trifecta)
    negatives: str = "hard"  #: "random" wrong label | "hard": drawn from the net's predictions
    hard_source: str = "head"  #: hard negatives from "head" (one neutral pass) | "goodness" (10 passes)
    label_value: float = 1.0  #: value written into the label pixel
    neutral_value: float = 0.1  #: value of every label pixel in the neutral (prediction) pass
    goodness_from: int = 1  #: goodness prediction sums layers >= this (clipped: a 1-layer net uses it)
    head: bool = True  #: train a one-pass softmax head (digital, local) on normalised activities
    head_from: int = 1  #: the head reads layers >= this (clipped like goodness_from)
    optimizer: str = "adam"  #: digital layers: "adam" | "sgd" | "momentum"
    lr: float = 1e-3  #: learning rate of the FF layers (analog: lr of the pulsed update)
    head_lr: float = 1e-3  #: learning rate of the softmax head (Adam)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  #: for optimizer="momentum" and analog_update="momentum"
    weight_decay: float = 0.0
    cooldown: float = 0.5  #: last fraction of the epochs: lr decays linearly towards 0
    shift: int = 0  #: training images jittered by up to this many pixels (0: off)
    image_side: int = 28
    analog_update: str = "auto"  #: AnalogLayer update: "auto" (onarray on a transfer compound, else adam) | "adam" |
    #: "momentum" | "normalized" | "sgd" (plain pulses, lr ~0.1) | "onarray" (the transfer compound's own learning)
    analog_bias: bool = True  #: analog layers get a bias row (a constant-1 input) on the array
    analog_init_range: float | None = None  #: weight mapping: the initial weights reach this fraction
    #: of the device's weight bound (larger: bigger weights against the device's write/read noise,
    #: less headroom before the bound). None: the profile's [mapping] init_range
    engine: str = "torch"  #: Crossbar engine for analog layers
    num_classes: int = 10
    seed: int = 0  #: weight initialisation (digital) and crossbar seeds (analog)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        choices = {
            "loss": ("symba", "hinton"),
            "goodness": ("mean", "sum"),
            "norm": ("length", "batch"),
            "negatives": ("random", "hard"),
            "hard_source": ("head", "goodness"),
            "optimizer": ("adam", "sgd", "momentum"),
            "analog_update": ANALOG_UPDATES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"FFConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.analog_init_range is not None and not 0 < self.analog_init_range <= 1:
            raise ValueError(f"FFConfig.analog_init_range={self.analog_init_range!r}; choose a fraction in (0, 1]")
        if self.negatives == "hard" and self.hard_source == "head" and not self.head:
            raise ValueError("hard negatives from the head need head=True (or hard_source='goodness')")
        self.betas = tuple(self.betas)


# ---------------------------------------------------------------------------------------------
# 2. Losses and closed-form local errors
# ---------------------------------------------------------------------------------------------
# Both losses are means over the B (positive, negative) pairs. The local error of unit j is
#   d_j = dL/dG * dG/dz_j = dL/dG * 2 relu(z_j) (/ n_units for the "mean" goodness),
# since d relu(z)^2 / dz = 2 relu(z).


def goodness(h: torch.Tensor, kind: str = "mean") -> torch.Tensor:
    """Goodness of each row of ReLU activities h: sum or mean of squares."""
    return (h * h).sum(1) if kind == "sum" else (h * h).mean(1)


def hinton_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, theta: float = 100.0) -> torch.Tensor:
    """softplus(-(G_pos - theta)) + softplus(G_neg - theta), mean over the batch."""
    return (F.softplus(theta - g_pos) + F.softplus(g_neg - theta)).mean()


def hinton_dloss(g_pos, g_neg, theta: float = 100.0):
    """(dL/dG_pos, dL/dG_neg) of :func:`hinton_loss`."""
    b = g_pos.shape[0]
    return -torch.sigmoid(theta - g_pos) / b, torch.sigmoid(g_neg - theta) / b


def symba_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
    """SymBa: softplus(alpha (G_neg - G_pos)), mean over the batch."""
    return F.softplus(alpha * (g_neg - g_pos)).mean()


def symba_dloss(g_pos, g_neg, alpha: float = 4.0):
    """(dL/dG_pos, dL/dG_neg) of :func:`symba_loss`."""
    s = alpha * torch.sigmoid(alpha * (g_neg - g_pos)) / g_pos.shape[0]
    return -s, s


def ff_loss_and_error(h_pos, h_neg, cfg: FFConfig):
    """Loss of one layer and its local error d = dL/dz, shape (2B, n), for [pos; neg] rows."""
    g_pos, g_neg = goodness(h_pos, cfg.goodness), goodness(h_neg, cfg.goodness)
    if cfg.loss == "symba":
        loss = symba_loss(g_pos, g_neg, cfg.alpha)
        dg_pos, dg_neg = symba_dloss(g_pos, g_neg, cfg.alpha)
    else:
        loss = hinton_loss(g_pos, g_neg, cfg.theta)
        dg_pos, dg_neg = hinton_dloss(g_pos, g_neg, cfg.theta)
    scale = 2.0 if cfg.goodness == "sum" else 2.0 / h_pos.shape[1]
    d = torch.cat([dg_pos[:, None] * h_pos, dg_neg[:, None] * h_neg]) * scale
    return loss, d


# ---------------------------------------------------------------------------------------------
# 3. Label overlay, negatives, augmentation
# ---------------------------------------------------------------------------------------------
def overlay_label(x: torch.Tensor, labels: torch.Tensor, num_classes: int = 10, value: float = 1.0):
    """Copy of x with the first ``num_classes`` pixels zeroed and a one-hot label written there."""
    x = x.clone()
    x[:, :num_classes] = 0.0
    x[torch.arange(x.shape[0], device=x.device), labels] = value
    return x


def overlay_neutral(x: torch.Tensor, num_classes: int = 10, value: float = 0.1):
    """Copy of x with every label pixel set to ``value`` (the neutral label)."""
    x = x.clone()
    x[:, :num_classes] = value
    return x


def random_wrong_labels(y: torch.Tensor, generator: torch.Generator, num_classes: int = 10):
    """A label != y for every sample, uniform over the wrong classes."""
    offset = torch.randint(1, num_classes, y.shape, generator=generator, device=generator.device)
    return (y + offset.to(y.device)) % num_classes


def hard_wrong_labels(probs: torch.Tensor, y: torch.Tensor, generator: torch.Generator, floor: float = 1e-6):
    """A wrong label per sample, drawn in proportion to the predicted probabilities (Hinton).

    The true class gets probability 0; ``floor`` keeps every wrong class reachable.
    """
    p = probs.detach().to(generator.device, torch.float64).clamp_min(0.0) + floor
    p[torch.arange(p.shape[0]), y.to(generator.device)] = 0.0
    return torch.multinomial(p, 1, generator=generator).squeeze(1).to(y.device)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, side: int = 28):
    """Each flattened side x side image moved by up to ``max_shift`` pixels in x and y (zero fill)."""
    if max_shift <= 0:
        return x
    b, k = x.shape[0], max_shift
    img = F.pad(x.view(b, side, side), (k, k, k, k))
    dy, dx = torch.randint(0, 2 * k + 1, (2, b), generator=generator, device=generator.device).to(x.device)
    ar = torch.arange(side, device=x.device)
    rows, cols = (dy[:, None] + ar)[:, :, None], (dx[:, None] + ar)[:, None, :]
    return img[torch.arange(b, device=x.device)[:, None, None], rows, cols].reshape(b, -1)


# ---------------------------------------------------------------------------------------------
# 4. Layers
# ---------------------------------------------------------------------------------------------
def adam_direction(m: torch.Tensor, v: torch.Tensor, t: int, g: torch.Tensor,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """Adam's step direction for gradient g at step t (1-based), updating m and v in place:
    W <- W - lr * the result (torch.optim.Adam's rule, for the analog periphery)."""
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    return (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)


class DigitalLayer(nn.Module):
    """A digital FF layer: ``nn.Linear`` and a torch optimiser fed with the local update d^T x."""

    def __init__(self, n_in: int, n_out: int, *, lr: float = 1e-3, optimizer: str = "adam",
                 betas=(0.9, 0.999), momentum: float = 0.9, weight_decay: float = 0.0,
                 bias: bool = True, generator: torch.Generator | None = None,
                 counters: OpCounts | None = None):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=bias)
        bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default init, drawn from our generator
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound, generator=generator)
            if bias:
                self.linear.bias.uniform_(-bound, bound, generator=generator)
        self.optimizer_name = optimizer
        params = list(self.linear.parameters())
        if optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
        elif optimizer == "momentum":
            self.opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
        self.counters = counters if counters is not None else OpCounts()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.linear.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, (n_out, n_in) = x.shape[0], self.linear.weight.shape
        self.counters += cost.linear_forward(b, n_in, n_out, self.linear.bias is not None, self.state_in_dram)
        return self.linear(x)

    #: set by FFNet: True when the net's resident state exceeds the on-chip SRAM
    #: (analogff.accounting.state_in_dram, the rule of every method)
    state_in_dram: bool = False

    def apply_update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """W <- optimiser step with gradient d^T x (and bias gradient sum_b d)."""
        b, (n_out, n_in) = x.shape[0], self.linear.weight.shape
        self.linear.weight.grad = d.t() @ x
        if self.linear.bias is not None:
            self.linear.bias.grad = d.sum(0)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        for p in self.linear.parameters():
            p.grad = None
        self.counters += cost.digital_update(b, n_in, n_out, self.optimizer_name, self.linear.bias is not None,
                                             self.state_in_dram)

    def optim_state(self) -> dict:
        return self.opt.state_dict()

    def load_optim_state(self, state: dict) -> None:
        self.opt.load_state_dict(state)

    @property
    def periphery_state_bytes(self) -> int:
        """Optimiser state besides the weights (Adam: m and v; momentum: one buffer)."""
        return cost.optimizer(self.optimizer_name).state_per_param * cost.BYTES_PER_VALUE * self.n_params

    @property
    def resident_bytes(self) -> int:
        """Weights, gradients and optimiser state kept between steps (the residency rule's input)."""
        return cost.digital_resident_bytes(self.n_params, self.optimizer_name)


ANALOG_UPDATES = ("auto", "sgd", "normalized", "momentum", "adam", "onarray")
#: the learning rate each analog rule is used with by default (the main job's ``ff_lr_analog`` when
#: unset): adam/momentum a step in weight units, sgd/normalized the pulsed update's lr, onarray the
#: transfer's gain into H (README, "Update rules")
ANALOG_LR = {"sgd": 0.1, "normalized": 3e-4, "momentum": 0.01, "adam": 1e-3, "onarray": 0.01}


def resolve_analog_update(rule: str, transfer: str | None) -> str:
    """The rule ``"auto"`` stands for: ``"onarray"`` on a transfer compound (``transfer``, the
    crossbar's algorithm), ``"adam"`` otherwise; any other rule is itself."""
    if rule != "auto":
        return rule
    return "onarray" if transfer is not None else "adam"


class AnalogLayer(nn.Module):
    """An analog FF layer: a crossbar does the MVM and applies the update as device pulses.

    ``update`` is what the digital periphery does with the local update d^T x before the array
    sees it (the hardware designer's options):

    - ``"sgd"``: plain pulsed SGD, the array applies lr d^T x itself (rank-B pulses). No state.
    - ``"normalized"``: the periphery rescales d so that the update d^T x has RMS (or max-abs)
      1, so lr is the size of each step in weight units. Its Frobenius norm needs no d^T x:
      ||d^T x||^2 = sum_ab (d d^T)_ab (x x^T)_ab, B^2 (n_in + n_out) MACs. No persistent state.
    - ``"momentum"``: the periphery forms d^T x digitally, keeps M <- beta M + d^T x, and writes
      lr M to the array row by row (one rank-one pulse update per input row). State: M.
    - ``"adam"`` (the default): likewise with Adam's m, v and bias correction. State: m and v.
    - ``"onarray"``: on-array learning, for a profile whose preset is one of aihwkit's transfer
      compounds (Tiki-Taka, TTv2, chopped TTv2, AGAD: ``analogff.engine.cells.transfer``). The
      array's own pulsed update takes lr d^T x on the fast array A, and the compound moves it onto
      the weights: every sample one column of A is read through the transfer ADC, integrated in a
      digital buffer H and written onto the weights as single pulses where |H| crosses its
      threshold. How FF's d meets the pulse trains: with the presets' ``auto_scale`` the pulse count
      learning rate is divided by running means of each sample's max|x| and max|d|, so the pulse
      trains follow d's direction and its size relative to the last ~100 batches, whatever its
      absolute scale (FF's d shrinks by orders of magnitude as the losses saturate); lr scales the
      transfer into H (how fast the weights follow A). State: what the algorithm keeps (H, AGAD's
      references, the choppers), counted by the crossbar.

    ``crossbar``: any object with ``forward(x)``, ``update(x, d, lr)``, ``update_rows(u, lr)``
    (momentum, adam) and ``counters`` (tests
    pass a fake); by default an ``analogff.crossbar.Crossbar`` built from ``device``.
    """

    def __init__(self, n_in: int, n_out: int, *, device=None, update: str = "auto",
                 bias: bool = True, momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8,
                 norm_stat: str = "rms", seed: int = 0, engine: str = "torch", crossbar=None,
                 counters: OpCounts | None = None, input_gain: float = 1.0, init_range: float | None = None):
        super().__init__()
        if update not in ANALOG_UPDATES:
            raise ValueError(f"update={update!r}; choose one of {ANALOG_UPDATES}")
        if norm_stat not in ("rms", "maxabs"):
            raise ValueError(f"norm_stat={norm_stat!r}; choose 'rms' or 'maxabs'")
        self.n_in, self.n_out, self.bias = n_in, n_out, bias
        # The periphery drives the rows with gain * x and divides the ADC output by gain: the layer
        # computes the same W x + b, but a length-normalised input (norm 1, entries ~1/sqrt(n))
        # uses the DAC's full range instead of a few of its levels next to the bias row's 1.
        self.input_gain = float(input_gain)
        self.update, self.momentum, self.betas = update, momentum, tuple(betas)
        self.eps, self.norm_stat = eps, norm_stat
        if crossbar is None:
            from analogff.crossbar import Crossbar  # lazy: the digital path needs no crossbar

            if device is None:
                raise ValueError("an analog layer needs a device profile (DeviceProfile or TOML path)")
            crossbar = Crossbar(n_in + int(bias), n_out, device=device, seed=seed, engine=engine,
                                init_range=init_range)
        self.xbar = crossbar
        transfer = getattr(crossbar, "transfer", None)
        update = self.update = resolve_analog_update(update, transfer)
        prof = getattr(crossbar, "profile", None)
        if transfer is not None and update in ("momentum", "adam"):
            raise ValueError(f"analog update {update!r} writes the weights row by row from the periphery, but profile "
                             f"{getattr(prof, 'name', '?')!r} ({getattr(prof, 'preset', '?')}) writes them with its "
                             "transfer: use --analog-update onarray (or auto), or the single-device profile")
        if update == "onarray" and transfer is None:
            raise ValueError(f"analog update 'onarray' needs a transfer-compound preset (Tiki-Taka, TTv2, c-TTv2, AGAD); "
                             f"profile {getattr(prof, 'name', '?')!r} uses {getattr(prof, 'preset', '?')}: pick e.g. "
                             "devices/ecram_agad.toml, or another --analog-update")
        shape = (n_out, n_in + int(bias))
        if update in ("momentum", "adam"):
            self.register_buffer("m", torch.zeros(shape))
        if update == "adam":
            self.register_buffer("v", torch.zeros(shape))
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.counters = counters if counters is not None else OpCounts()

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """The array's input rows: gain * x, plus a constant-1 row that holds the bias."""
        x = x * self.input_gain if self.input_gain != 1.0 else x
        return torch.cat([x, torch.ones_like(x[:, :1])], 1) if self.bias else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counters += cost.analog_periphery_io(x.shape[0], self.n_in, self.n_out)  # activations
        y = self.xbar.forward(self._rows(x))
        return y / self.input_gain if self.input_gain != 1.0 else y

    def apply_update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """W <- W - lr * U, U = d^T x processed by the periphery rule ``self.update``."""
        x = self._rows(x)
        if self.input_gain != 1.0:
            d = d / self.input_gain  # (d / gain)^T (gain x) = d^T x
        b, n_in, n_out = x.shape[0], x.shape[1], d.shape[1]
        gram = self.norm_stat == "rms" and b * (n_in + n_out) < n_in * n_out
        # the periphery's work for this rule: x, d to the drivers; d^T x, optimiser state (m, v)
        self.counters += cost.analog_update(self.update, b, n_in, n_out, self.state_in_dram, gram=gram)
        if self.update in ("sgd", "onarray"):  # the array's own update (onarray: A, then the transfer)
            self.xbar.update(x, d, lr)
            return
        if self.update == "normalized":
            if gram:
                sq = ((d @ d.t()) * (x @ x.t())).sum()  # ||d^T x||_F^2 without forming d^T x
                stat = (sq.clamp_min(0.0) / (n_in * n_out)).sqrt()
            else:
                g = d.t() @ x
                stat = g.abs().max() if self.norm_stat == "maxabs" else g.pow(2).mean().sqrt()
            self.xbar.update(x, d / (stat + self.eps), lr)
            return
        g = d.t() @ x  # momentum / adam: the periphery needs the full update matrix
        if self.update == "momentum":
            self.m.mul_(self.momentum).add_(g)
            u = self.m
        else:
            self.step += 1
            u = adam_direction(self.m, self.v, int(self.step), g, self.betas, self.eps)
        # Row-by-row transfer: row i driven alone with the column errors U[:, i] applies U.
        self.xbar.update_rows(u, lr)

    @property
    def state_in_dram(self) -> bool:
        """Set by FFNet: True when the net's resident state (the periphery's m, v or the unit cells'
        H / chi, and the head) exceeds the on-chip SRAM (analogff.accounting.state_in_dram, the rule
        of every method); the crossbar counts its cells' state traffic by the same answer."""
        return self.__dict__.get("_state_in_dram", False)

    @state_in_dram.setter
    def state_in_dram(self, value: bool) -> None:
        self.__dict__["_state_in_dram"] = bool(value)
        if hasattr(self.xbar, "state_in_dram"):
            self.xbar.state_in_dram = bool(value)

    @property
    def periphery_state_bytes(self) -> int:
        """Digital state the periphery keeps between updates for this layer, in bytes: the rule's
        (m, v) and the unit cells' (a transfer compound's H and references, a mixed-precision chi)."""
        n = self.n_out * (self.n_in + int(self.bias))
        cells = int(getattr(self.xbar, "periphery_state_bytes", 0))
        if self.update in ("sgd", "normalized", "onarray"):
            return cells
        state = cost.optimizer(self.update).state_per_param * cost.BYTES_PER_VALUE * n
        return cells + state + (8 if self.update == "adam" else 0)  # Adam's step counter

    @property
    def resident_bytes(self) -> int:
        return self.periphery_state_bytes

    def optim_state(self) -> dict:
        return {}  # the periphery state lives in buffers (m, v, step): part of state_dict

    def load_optim_state(self, state: dict) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# 5. The FF network
# ---------------------------------------------------------------------------------------------
class FFNet(nn.Module):
    """A stack of FF layers (``dims = [784, n1, n2, ...]``), trained layer-locally.

    ``layer``: "digital" (``DigitalLayer``) or "analog" (``AnalogLayer`` on a crossbar of the
    device profile ``device``: a ``DeviceProfile`` or a path to its TOML file).
    ``crossbar_factory(n_rows, n_cols, seed)``, optional, builds the crossbars instead (tests use
    a digital fake; experiments may pass Crossbar options).
    """

    def __init__(self, dims, layer: str = "digital", device=None, config: FFConfig | None = None,
                 crossbar_factory: Callable | None = None):
        super().__init__()
        if layer not in ("digital", "analog"):
            raise ValueError(f"layer={layer!r}; choose 'digital' or 'analog'")
        if len(dims) < 2:
            raise ValueError("dims needs an input size and at least one layer size")
        cfg = config if config is not None else FFConfig()
        self.config, self.dims, self.layer_kind = cfg, list(dims), layer
        self.counters = OpCounts()  #: training work of the periphery / digital layers
        self.eval_counters = OpCounts()  #: evaluation done by train_ff (test accuracy), all of it
        gen = torch.Generator().manual_seed(cfg.seed)
        layers = []
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            if layer == "digital":
                layers.append(DigitalLayer(n_in, n_out, lr=cfg.lr, optimizer=cfg.optimizer, betas=cfg.betas,
                                           momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                           generator=gen, counters=self.counters))
            else:
                layers.append(AnalogLayer(n_in, n_out, device=device, update=cfg.analog_update,
                                          bias=cfg.analog_bias, momentum=cfg.momentum, betas=cfg.betas,
                                          seed=cfg.seed * 1000 + i, engine=cfg.engine, counters=self.counters,
                                          init_range=cfg.analog_init_range,
                                          input_gain=math.sqrt(n_in) if i > 0 and cfg.norm == "length" else 1.0,
                                          crossbar=None if crossbar_factory is None else
                                          crossbar_factory(n_in + int(cfg.analog_bias), n_out, cfg.seed * 1000 + i)))
        self.layers = nn.ModuleList(layers)
        for i, n in enumerate(dims[1:]):  # batch-norm statistics (used only when norm="batch")
            self.register_buffer(f"bn_mean{i}", torch.zeros(n))
            self.register_buffer(f"bn_var{i}", torch.ones(n))
        n_head_in = sum(dims[1 + self.head_from:])
        self.head = (DigitalLayer(n_head_in, cfg.num_classes, lr=cfg.head_lr, optimizer="adam",
                                  generator=gen, counters=self.counters) if cfg.head else None)
        # One residency rule for every method: the resident state in SRAM if it fits, else DRAM. In
        # training: the digital layers' weights, gradients and optimiser state, the analog periphery's
        # m and v, the head's; in inference (eval mode): the digital weights only.
        stateful = [*layers, *([self.head] if self.head is not None else [])]
        self.resident_bytes = sum(lay.resident_bytes for lay in stateful)
        self.inference_resident_bytes = sum(cost.BYTES_PER_VALUE * lay.n_params for lay in stateful
                                            if isinstance(lay, DigitalLayer))
        self.train(self.training)

    def train(self, mode: bool = True) -> "FFNet":
        """nn.Module.train, and the residency of the phase: training or inference state."""
        super().train(mode)
        in_dram = cost.state_in_dram(self.resident_bytes if mode else self.inference_resident_bytes)
        for lay in [*self.layers, *([self.head] if self.head is not None else [])]:
            lay.state_in_dram = in_dram
        return self

    # -- which layers feed prediction -----------------------------------------------------------
    @property
    def goodness_from(self) -> int:
        return min(self.config.goodness_from, len(self.layers) - 1)

    @property
    def head_from(self) -> int:
        return min(self.config.head_from, len(self.layers) - 1)

    # -- one layer's nonlinearity and the normalisation between layers --------------------------
    def normalize(self, i: int, h: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        """Activities h of layer i as the next layer sees them (only their orientation/pattern)."""
        b, n = h.shape
        if self.config.norm == "length":  # divide by the RMS: length normalised to sqrt(n)
            self.counters += cost.length_norm(b, n)
            return h / (h.pow(2).mean(1, keepdim=True).sqrt() + self.config.eps)
        self.counters += cost.batch_norm(b, n, update_stats)
        mean, var = getattr(self, f"bn_mean{i}"), getattr(self, f"bn_var{i}")
        if update_stats:  # batch statistics of this training batch; running averages for inference
            bm, bv = h.mean(0), h.var(0, unbiased=False)
            mean.mul_(0.9).add_(bm, alpha=0.1)
            var.mul_(0.9).add_(bv, alpha=0.1)
        else:
            bm, bv = mean, var
        return (h - bm) / (bv + 1e-5).sqrt()

    def _relu(self, z: torch.Tensor) -> torch.Tensor:
        self.counters += cost.relu(z.numel())
        return torch.relu(z)

    @torch.no_grad()
    def activities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ReLU activities of every layer for inputs x (labels already overlaid)."""
        hs = []
        for i, layer in enumerate(self.layers):
            h = self._relu(layer(x))
            hs.append(h)
            if i + 1 < len(self.layers):
                x = self.normalize(i, h)
        return hs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes) goodness per label: the FF net's class scores."""
        return self.goodness_per_label(x)

    # -- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_per_label(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes): goodness summed over layers >= goodness_from, with each label overlaid."""
        cfg, k = self.config, self.config.num_classes
        b = x.shape[0]
        labels = torch.arange(k, device=x.device).repeat_interleave(b)
        hs = self.activities(overlay_label(x.repeat(k, 1), labels, k, cfg.label_value))
        score = sum(goodness(h, cfg.goodness) for h in hs[self.goodness_from:])
        self.counters += cost.goodness_scores(sum(h.numel() for h in hs[self.goodness_from:]))
        return score.view(k, b).t()

    @torch.no_grad()
    def head_input(self, hs: list[torch.Tensor]) -> torch.Tensor:
        """The softmax head's input: normalised activities of layers >= head_from, concatenated."""
        return torch.cat([self.normalize(i, h) for i, h in enumerate(hs) if i >= self.head_from], 1)

    @torch.no_grad()
    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """One-pass prediction: neutral label, then the linear softmax head."""
        cfg = self.config
        hs = self.activities(overlay_neutral(x, cfg.num_classes, cfg.neutral_value))
        return self.head(self.head_input(hs))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, method: str = "goodness") -> torch.Tensor:
        if method == "goodness":
            return self.goodness_per_label(x).argmax(1)
        if method == "softmax":
            if self.head is None:
                raise ValueError("this net has no softmax head (FFConfig.head=False)")
            return self.head_logits(x).argmax(1)
        raise ValueError(f"method={method!r}; choose 'goodness' or 'softmax'")

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, method: str = "goodness", batch_size: int = 1000) -> float:
        x, y = torch.as_tensor(x).float(), torch.as_tensor(y)
        was_training = self.training
        self.eval()
        dev = self.device
        correct = 0
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev)
            correct += int((self.predict(xb, method) == yb).sum())
        self.train(was_training)
        return correct / max(1, x.shape[0])

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers())).device

    # -- one training step ----------------------------------------------------------------------
    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                   lr: float | None = None, head_lr: float | None = None, epoch: int | None = None) -> dict:
        """One FF step on a mini-batch: head + negatives, then every layer updated locally.

        Returns {"loss": sum of layer losses, "layer_losses": [...], "head_loss": float}.
        Raises FloatingPointError on a non-finite loss.
        """
        cfg, k = self.config, self.config.num_classes
        lr = cfg.lr if lr is None else lr
        head_lr = cfg.head_lr if head_lr is None else head_lr
        b = x.shape[0]
        out = {"head_loss": float("nan")}

        # Neutral pass: trains the softmax head and gives the class probabilities for hard negatives.
        probs = None
        if self.head is not None:
            hs = self.activities(overlay_neutral(x, k, cfg.neutral_value))
            for i, h in enumerate(hs):
                _check_finite(h, f"layer {i}", epoch, lr)
            hin = self.head_input(hs)
            logits = self.head(hin)
            _check_finite(logits, "the softmax head", epoch, head_lr)
            probs = torch.softmax(logits, 1)
            out["head_loss"] = float(F.cross_entropy(logits, y))
            d_head = (probs - F.one_hot(y, k).to(probs.dtype)) / b  # cross-entropy's dL/dlogits
            self.counters += cost.head_loss(b, k)
            self.head.apply_update(hin, d_head, head_lr)
        if cfg.negatives == "hard":
            if cfg.hard_source == "goodness":
                probs = torch.softmax(cfg.alpha * self.goodness_per_label(x), 1)
            y_neg = hard_wrong_labels(probs, y, generator)
        else:
            y_neg = random_wrong_labels(y, generator, k)

        # Positive and negative data go through each layer together; each layer learns alone.
        inp = torch.cat([overlay_label(x, y, k, cfg.label_value), overlay_label(x, y_neg, k, cfg.label_value)])
        losses = []
        for i, layer in enumerate(self.layers):
            h = self._relu(layer(inp))
            loss, d = ff_loss_and_error(h[:b], h[b:], cfg)
            self.counters += cost.ff_layer_loss(b, h.shape[1])
            _check_finite(loss, f"layer {i}", epoch, lr)
            next_inp = self.normalize(i, h, update_stats=True)  # (last layer: for the head / BN stats)
            layer.apply_update(inp, d, lr)
            losses.append(float(loss))
            inp = next_inp
        out["layer_losses"] = losses
        out["loss"] = sum(losses)
        return out

    # -- counts and state -----------------------------------------------------------------------
    def total_counts(self) -> OpCounts:
        """Training counts: the periphery/digital counts plus every crossbar's (not ``eval_counters``)."""
        from analogff.energy import total_counts

        return total_counts(self)

    @property
    def periphery_state_bytes(self) -> int:
        """Digital optimiser/periphery state of all layers and the head, in bytes."""
        n = sum(layer.periphery_state_bytes for layer in self.layers)
        return n + (self.head.periphery_state_bytes if self.head is not None else 0)

    def optim_state(self) -> dict:
        state = {f"layer{i}": layer.optim_state() for i, layer in enumerate(self.layers)}
        if self.head is not None:
            state["head"] = self.head.optim_state()
        return state

    def load_optim_state(self, state: dict) -> None:
        for i, layer in enumerate(self.layers):
            layer.load_optim_state(state[f"layer{i}"])
        if self.head is not None:
            self.head.load_optim_state(state["head"])


def _check_finite(t: torch.Tensor, where: str, epoch: int | None, lr: float) -> None:
    """Raise a FloatingPointError that names the layer and epoch if t holds NaN or inf."""
    if t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t.detach()))).all()):  # one pass
        when = f"epoch {epoch}" if epoch is not None else "this step"
        raise FloatingPointError(f"non-finite loss/activity (NaN or inf) in {where} at {when}: the weights "
                                 f"diverged; try a lower learning rate (lr={lr:g})")


# ---------------------------------------------------------------------------------------------
# 6. Training loop
# ---------------------------------------------------------------------------------------------
def load_mnist_data() -> dict:
    """{"train": (x, y), "test": (x, y)} from :func:`analogff.data.load_mnist`, as tensors."""
    from analogff.data import load_mnist

    out = {}
    for split in ("train", "test"):
        x, y = load_mnist(split)
        out[split] = (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))
    return out


def _lr_factor(epoch: int, epochs: int, cooldown: float) -> float:
    """1 until the last ``cooldown`` fraction of epochs, then linear towards 0 (never 0)."""
    n_cool = int(round(cooldown * epochs))
    if n_cool <= 0 or epoch < epochs - n_cool:
        return 1.0
    return (epochs - epoch) / (n_cool + 1)


def _save_atomic(obj, path) -> None:
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_states(net: FFNet) -> dict:
    """RNG state of crossbars that expose their generator (for exact analog resume)."""
    out = {}
    for i, layer in enumerate(net.layers):
        g = _xbar_generator(layer)
        if g is not None:
            out[i] = g.get_state()
    return out


def _xbar_generator(layer):
    """The crossbar's random generator (anything with get_state/set_state), or None."""
    xbar = getattr(layer, "xbar", None)
    for owner in (xbar, getattr(xbar, "engine", None)):
        for name in ("generator", "rng"):
            g = getattr(owner, name, None)
            if hasattr(g, "get_state") and hasattr(g, "set_state"):
                return g
    return None


def train_ff(net: FFNet, data, cfg: FFConfig | None = None, epochs: int = 10, batch_size: int = 100,
             seed: int = 0, checkpoint=None, resume: bool = False,
             on_epoch: Callable[[dict], None] | None = None, progress: bool = True,
             eval_goodness_every: int = 1, eval_batch_size: int = 1000) -> list[dict]:
    """Train ``net`` with Forward-Forward; returns the per-epoch metrics.

    data: {"train": (x, y), "test": (x, y)} (or a 4-tuple x_train, y_train, x_test, y_test);
      x float (N, 784) in [0, 1], y int64. "test" may be None (no test metrics).
    cfg: training-time options (negatives, shift, cooldown, lr, ...); None uses ``net.config``.
      The net keeps using the config it was built with for its structure.
    seed: a torch.Generator seeded with it draws the batch order, negatives and shifts: the same
      seed gives the same numbers bit for bit (on CPU, same thread count).
    checkpoint: a path; after every epoch the net, optimiser state, RNG state and history are
      written there atomically (temp file + os.replace). resume=True continues from it, and the
      result equals an uninterrupted run.
    on_epoch: called with each epoch's metrics dict.
    eval_goodness_every: goodness prediction costs 10 passes; evaluate it every n epochs (and at
      the last epoch).

    Metrics per epoch: epoch, lr, train_loss (sum over layers, mean over batches), head_loss,
    test_acc_goodness, test_acc_softmax (None when not evaluated), train_time_s, eval_time_s,
    wall_time_s (cumulative since the start of the run, across resumes).
    """
    if cfg is not None:
        net.config = cfg
    cfg = net.config
    if isinstance(data, (tuple, list)):
        data = {"train": (data[0], data[1]), "test": (data[2], data[3]) if len(data) > 2 else None}
    x_train, y_train = (torch.as_tensor(t) for t in data["train"])
    test = data.get("test")
    x_train = x_train.float()
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    start_epoch, wall_before = 0, 0.0

    if resume and checkpoint is not None and os.path.exists(checkpoint):
        ck = torch.load(checkpoint, map_location=net.device, weights_only=False)
        written = {"epochs": ck["epochs"], "batch_size": ck["batch_size"], "seed": ck["seed"],
                   "dims": ck.get("dims"), "layer": ck.get("layer"), "config": ck.get("config"),
                   "device_profile": ck.get("device_profile")}
        now = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "dims": net.dims, "layer": net.layer_kind,
               "config": asdict(cfg), "device_profile": _profile_dict(net)}
        diff = first_difference(written, now)
        if diff is not None:
            key, old, new = diff
            raise ValueError(f"checkpoint {checkpoint} was written with {key}={old!r}, not {new!r}; "
                             "resume with the same settings or start afresh")
        net.load_state_dict(ck["net"])
        net.load_optim_state(ck["optim"])
        gen.set_state(ck["rng"])
        for i, state in ck.get("xbar_rng", {}).items():
            _xbar_generator(net.layers[i]).set_state(state)
        net.counters.reset()
        net.counters += OpCounts(**ck["counters"])
        net.eval_counters.reset()
        net.eval_counters += OpCounts(**ck.get("eval_counters", {}))
        history, start_epoch = ck["history"], ck["epoch"] + 1
        wall_before = history[-1]["wall_time_s"] if history else 0.0

    n = x_train.shape[0]
    n_batches = math.ceil(n / batch_size)
    dev = net.device
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        net.train()
        factor = _lr_factor(epoch, epochs, cfg.cooldown)
        lr, head_lr = cfg.lr * factor, cfg.head_lr * factor
        perm = torch.randperm(n, generator=gen)
        loss_sum, head_sum = 0.0, 0.0
        bar = _progress(range(n_batches), progress, f"FF epoch {epoch + 1}/{epochs}")
        for bi in bar:
            idx = perm[bi * batch_size:(bi + 1) * batch_size]
            xb = random_shift(x_train[idx], cfg.shift, gen, cfg.image_side).to(dev)
            step = net.train_step(xb, y_train[idx].to(dev), gen, lr=lr, head_lr=head_lr, epoch=epoch)
            loss_sum += step["loss"]
            head_sum += step["head_loss"]
            if progress and bi % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / (bi + 1):.4f}")
        train_time = time.perf_counter() - t0

        t1 = time.perf_counter()
        acc_g = acc_s = None
        eval_samples = 0
        if test is not None:  # evaluation: counted into net.eval_counters, never as training
            x_test, y_test = (torch.as_tensor(t) for t in test)
            with evaluation(net, net.eval_counters):
                if (epoch + 1) % max(1, eval_goodness_every) == 0 or epoch + 1 == epochs:
                    acc_g = net.accuracy(x_test.float(), y_test, "goodness", eval_batch_size)
                    eval_samples += x_test.shape[0]
                if net.head is not None:
                    acc_s = net.accuracy(x_test.float(), y_test, "softmax", eval_batch_size)
                    eval_samples += x_test.shape[0]
        eval_time = time.perf_counter() - t1
        prev_wall = history[-1]["wall_time_s"] if history else wall_before
        metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / n_batches,
                   "head_loss": head_sum / n_batches if net.head is not None else None,
                   "test_acc_goodness": acc_g, "test_acc_softmax": acc_s,
                   "eval_samples": eval_samples, "train_time_s": train_time, "eval_time_s": eval_time,
                   "wall_time_s": prev_wall + train_time + eval_time}
        history.append(metrics)
        if progress:
            _log(metrics)
        if checkpoint is not None:
            _save_atomic({"epoch": epoch, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                          "net": net.state_dict(), "optim": net.optim_state(), "rng": gen.get_state(),
                          "xbar_rng": _rng_states(net), "counters": net.counters.as_dict(),
                          "eval_counters": net.eval_counters.as_dict(),
                          "history": history, "config": asdict(cfg), "dims": net.dims,
                          "layer": net.layer_kind, "device_profile": _profile_dict(net)}, checkpoint)
        if on_epoch is not None:
            on_epoch(metrics)
    return history


def first_difference(old, new, prefix: str = ""):
    """The first (dotted key, old value, new value) where two nested dicts / values differ, or None.
    Tuples and lists compare alike (a config read back from JSON has lists)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(dict.fromkeys([*old, *new])):
            d = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if d is not None:
                return d
        return None
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        if len(old) == len(new) and all(first_difference(a, b) is None for a, b in zip(old, new)):
            return None
    elif old == new or (isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)):
        return None
    return prefix.rstrip(".") or "value", old, new


def _profile_dict(net) -> dict | None:
    """The device profile of an analog net's crossbars (resolved), for checkpoint checks; None if digital."""
    for layer in net.layers:
        prof = getattr(getattr(layer, "xbar", None), "profile", None)
        if hasattr(prof, "to_dict"):
            return prof.to_dict()
    return None


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    import sys

    from tqdm.auto import tqdm

    # a bar only on a terminal; in a log (a file, a pipe, a sweep cell) one line per epoch (_log)
    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())


def _log(m: dict) -> None:
    fmt = lambda v: "  -  " if v is None else f"{100 * v:.2f}%"  # noqa: E731
    print(f"epoch {m['epoch']:3d}  loss {m['train_loss']:.4f}  test acc goodness {fmt(m['test_acc_goodness'])}"
          f"  softmax {fmt(m['test_acc_softmax'])}  ({m['train_time_s']:.1f}s train, "
          f"{m['eval_time_s']:.1f}s eval)", flush=True)
