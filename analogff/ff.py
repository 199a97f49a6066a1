"""Forward-Forward (Hinton 2022) on digital or analog layers, in one file.

Read top to bottom:

1. ``FFConfig``: every knob, with the default recipe.
2. Losses and their closed-form local errors ``d = dLoss/dz`` (Hinton's threshold loss, SymBa).
3. Label overlay, negative labels (random wrong / hard), random-shift augmentation.
4. ``FFNet``: normalisation between layers, goodness, one training step, prediction. Its layers
   come from :mod:`analogff.layers`: ``DigitalLayer`` (``nn.Linear`` + a torch optimiser) and
   ``AnalogLayer`` (an ``analogff.crossbar.Crossbar`` + an update rule in the digital periphery).
   Both expose ``forward(x) -> z`` and ``apply_update(x, d, lr)``: W <- W - lr * d^T x, local.

The training loop (mini-batches, seeded RNG, metrics, checkpoints, resume) is
:func:`analogff.train.train_ff`.

One training step on a mini-batch x with labels y (all layers updated, no gradient crosses a layer):

    neutral pass  (label pixels = 0.1)      -> softmax head trained on it; class probabilities
    y_neg         = a wrong label, random or drawn in proportion to those probabilities ("hard")
    for each layer, on [x with label y ; x with label y_neg]:
        z = W x_in (+b);  h = relu(z);  G = goodness(h)          (positive half, negative half)
        d = dLoss/dG * dG/dz        closed form, per unit and sample
        W <- W - lr d^T x_in       (rank-2B update: exactly what a crossbar does with pulses)
        x_in = normalise(h)        (length normalisation removes goodness; input is detached)

Everything runs under ``torch.no_grad()``: the algorithm needs no autograd at all.

Prediction by goodness runs k label trials per sample (label c overlaid, the goodness of layers >=
goodness_from summed, the best label wins). ``FFConfig.label_readout`` says how an array reads
them: "overlay" (k full passes), "shared" (the first layer reads the image once, the label rows'
part is added digitally), "differential" (also: deeper analog layers read the trials' mean once and
each trial's small difference, so the read noise that separates the labels shrinks with that
difference's range; benchmarks/readout.py measures why this matters on Fashion-MNIST).

Variants of the step (``FFConfig``): ``pairwise``, the Trifecta's overlapping updates (on alternate
steps a layer's loss also trains the layer below, through W^T: a transposed MVM on an array, counted
as such; :mod:`analogff.pairwise`); ``collaborative``, layer collaboration (each layer's error from
the goodness summed over all layers, the others' constant: the whole forward pass comes before
the updates); ``dropout`` of the upper layers' inputs; the design space of :mod:`analogff.objectives`.

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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from analogff import accounting as cost
from analogff import pairwise, readout
from analogff.objectives import ff_loss_and_error_general, goodness, peer_norm_loss_and_error  # noqa: F401
from analogff.objectives import goodness_grad, margin_loss  # noqa: F401 (re-exported)
from analogff.energy import OpCounts
from analogff.layers import ANALOG_UPDATES, AnalogLayer, DigitalLayer, LayerStackState
from analogff.layers import ANALOG_LR, adam_direction, resolve_analog_update  # noqa: F401 (re-exported)


#: FFConfig.goodness values (:func:`goodness`)
GOODNESS_KINDS = ("mean", "sum", "abs", "pnorm")
#: FFConfig.label_readout values (FFNet.goodness_per_label)
LABEL_READOUTS = ("overlay", "shared", "differential")


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
    goodness: str = "sum"  #: "sum" (Hinton) | "mean" of squared ReLU activities of a layer | "abs": sum of
    #: the unsquared activities | "pnorm": (sum h^p)^(1/p), p = goodness_p
    goodness_p: float = 2.0  #: the p of goodness="pnorm" (> 0)
    goodness_sign: str = "max"  #: "max": positive data gets high goodness | "min": Hinton's "min ssq", positive
    #: data gets low goodness and negative data high; prediction then picks the lowest goodness
    loss_fn: str = "logsigmoid"  #: f of the margin m (hinton: G_pos - theta and theta - G_neg; symba: alpha
    #: (G_pos - G_neg)): "logsigmoid": -log sigmoid(m) = softplus(-m) | "sigmoid": 1 - sigmoid(m)
    pairwise: bool = False  #: alternated pairwise learning (the Trifecta; analogff.pairwise): on alternate
    #: steps a layer's loss also trains the layer below it, through its weights (a counted transposed MVM on
    #: an array)
    peer_norm: float = 0.0  #: peer normalisation coefficient (0.03 in loeweX/Forward-Forward; 0: off): the loss
    #: peer_norm * mean_j (mean(r) - r_j)^2 on each unit's running mean r_j <- 0.9 r_j + 0.1 mean_pos(h_j)
    norm: str = "length"  #: between layers: "length" (Hinton) | "batch" (Trifecta)
    negatives: str = "hard"  #: "random" wrong label | "hard": drawn from the net's predictions
    hard_source: str = "head"  #: hard negatives from "head" (one neutral pass) | "goodness" (10 passes)
    label_value: float = 1.0  #: value written into the label pixel
    neutral_value: float = 0.1  #: value of every label pixel in the neutral (prediction) pass
    goodness_from: int = 0  #: goodness prediction sums layers >= this (clipped: a 1-layer net uses it); Hinton
    #: skipped the first layer (1); summing all is better here (Fashion-MNIST +2.6 pp, MNIST within 0.05 pp;
    #: benchmarks/results/readout_1218739.txt)
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
    elastic: float = 0.0  #: training images elastically distorted (Simard et al. 2003): a random displacement
    #: field, uniform in [-1, 1] per pixel and axis, smoothed by a Gaussian of ``elastic_sigma`` pixels, times
    #: this (pixels; 34 with sigma 4 moves a pixel by about 1.4 px rms); 0: off. Applied before the shift
    elastic_sigma: float = 4.0  #: std of the elastic field's Gaussian smoothing, in pixels
    collaborative: bool = False  #: layer collaboration (Lorberbom et al., AAAI 2024, arXiv 2305.12393): each layer's
    #: loss sees the goodness summed over every layer, the other layers' as constants, so its error is still
    #: local (one scalar per sample shared by the layers); the net's forward pass runs before any update
    dropout: float = 0.0  #: training only: every input value of layers 2.. (the normalised activities of the
    #: layer below) is zeroed with this probability and the rest scaled by 1 / (1 - p) (0: off)
    image_side: int = 28
    analog_update: str = "auto"  #: AnalogLayer update: "auto" (onarray on a transfer compound, else adam) | "adam" |
    #: "momentum" | "normalized" | "sgd" (plain pulses, lr ~0.1) | "onarray" (the transfer compound's own learning)
    analog_bias: bool = True  #: analog layers get a bias row (a constant-1 input) on the array
    analog_reads: int | None = None  #: analog layers read every forward MVM this many times and average the
    #: ADC outputs (training and evaluation): read noise / sqrt(reads), reads x the read energy, all counted.
    #: None: 2 with a periphery rule (adam, momentum: on Fashion-MNIST the head trails digital FF's by
    #: 0.85 pp with 2 reads, 1.30 pp with 1; the second read is 2 % of the training energy), 1 with the
    #: array's own update (sgd, normalized, onarray: there the ADC is a third to a half of it)
    #: (docs/networks.md, "Read noise in training")
    analog_init_range: float | None = None  #: weight mapping: the initial weights reach this fraction
    #: of the device's weight bound (larger: bigger weights against the device's write/read noise,
    #: less headroom before the bound). None: the profile's [mapping] init_range
    label_readout: str = "differential"  #: how goodness prediction reads its k label trials (see
    #: FFNet.goodness_per_label): "overlay" (k full passes, the label overlaid) | "shared" (the first
    #: layer reads the image once per sample and adds the label rows' contribution) | "differential"
    #: ("shared", and deeper analog layers read the trials' mean once plus each trial's difference: the
    #: read noise that tells the labels apart shrinks with the differences; benchmarks/readout.py)
    label_reads: int = 32  #: "shared"/"differential" on an analog first layer: reads of each label row
    #: per prediction batch, averaged (at most the batch size)
    engine: str = "torch"  #: Crossbar engine for analog layers
    num_classes: int = 10
    seed: int = 0  #: weight initialisation (digital) and crossbar seeds (analog)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        choices = {
            "loss": ("symba", "hinton"),
            "goodness": GOODNESS_KINDS,
            "goodness_sign": ("max", "min"),
            "loss_fn": ("logsigmoid", "sigmoid"),
            "norm": ("length", "batch"),
            "negatives": ("random", "hard"),
            "hard_source": ("head", "goodness"),
            "optimizer": ("adam", "sgd", "momentum"),
            "analog_update": ANALOG_UPDATES,
            "label_readout": LABEL_READOUTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"FFConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if isinstance(self.goodness_p, bool) or not isinstance(self.goodness_p, (int, float)) \
                or not math.isfinite(self.goodness_p) or self.goodness_p <= 0:
            raise ValueError(f"FFConfig.goodness_p={self.goodness_p!r}; choose a finite p > 0")
        if isinstance(self.peer_norm, bool) or not isinstance(self.peer_norm, (int, float)) \
                or not math.isfinite(self.peer_norm) or self.peer_norm < 0:
            raise ValueError(f"FFConfig.peer_norm={self.peer_norm!r}; choose a finite coefficient >= 0")
        if self.analog_reads is not None and (isinstance(self.analog_reads, bool) or not isinstance(self.analog_reads, int)
                                              or self.analog_reads < 1):
            raise ValueError(f"FFConfig.analog_reads={self.analog_reads!r}; choose an integer >= 1 (or None: by rule)")
        if isinstance(self.label_reads, bool) or not isinstance(self.label_reads, int) or self.label_reads < 1:
            raise ValueError(f"FFConfig.label_reads={self.label_reads!r}; choose an integer >= 1")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise ValueError(f"FFConfig.dropout={self.dropout!r}; choose a probability in [0, 1)")
        for name, zero_ok in (("elastic", True), ("elastic_sigma", False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (v == 0 and not zero_ok):
                raise ValueError(f"FFConfig.{name}={v!r}; choose a finite number {'>= 0 (0: off)' if zero_ok else '> 0'}")
        if self.analog_init_range is not None and not 0 < self.analog_init_range <= 1:
            raise ValueError(f"FFConfig.analog_init_range={self.analog_init_range!r}; choose a fraction in (0, 1]")
        if self.collaborative and self.pairwise:
            raise ValueError("FFConfig.collaborative=True with pairwise=True: choose one (pairwise learning "
                             "trains a layer from the loss above it, collaboration from the goodness of all)")
        if self.negatives == "hard" and self.hard_source == "head" and not self.head:
            raise ValueError("hard negatives from the head need head=True (or hard_source='goodness')")
        self.betas = tuple(self.betas)


# ---------------------------------------------------------------------------------------------
# 2. Losses and closed-form local errors
# ---------------------------------------------------------------------------------------------
# Both losses are means over the B (positive, negative) pairs. The local error of unit j is
#   d_j = dL/dG * dG/dz_j = dL/dG * 2 relu(z_j) (/ n_units for the "mean" goodness),
# since d relu(z)^2 / dz = 2 relu(z).


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


def ff_loss_and_error(h_pos, h_neg, cfg: FFConfig, others: tuple | None = None):
    """Loss of one layer and its local error d = dL/dz, shape (2B, n), for [pos; neg] rows.

    With ``goodness_sign="min"`` the losses see s = -G (and the threshold -theta): positive data is
    pushed below theta, negative data above it. ``others`` (collaborative FF): the goodness of the
    other layers for the positive and the negative rows, added to this layer's as constants."""
    if cfg.goodness not in ("sum", "mean") or cfg.goodness_sign != "max" or cfg.loss_fn != "logsigmoid":
        return ff_loss_and_error_general(h_pos, h_neg, cfg, others)
    g_pos, g_neg = goodness(h_pos, cfg.goodness), goodness(h_neg, cfg.goodness)
    if others is not None:
        g_pos, g_neg = g_pos + others[0], g_neg + others[1]
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


def _channels(n: int, side: int, who: str) -> int:
    """How many side x side channels a flattened image of n values holds; a size that is not whole
    channels is a one-line error naming FFConfig.image_side."""
    c, rest = divmod(n, side * side)
    if rest or c < 1:
        raise ValueError(f"{who}: {n} values per image are not whole {side} x {side} channels; "
                         "set FFConfig.image_side to the images' side")
    return c


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, side: int = 28):
    """Each flattened image of side x side pixels (channel-major, as CIFAR-10's batches store them:
    any number of channels) moved by up to ``max_shift`` pixels in x and y (zero fill); all channels
    of an image move together."""
    if max_shift <= 0:
        return x
    (b, n), k = x.shape, max_shift
    c = _channels(n, side, "random_shift")
    img = F.pad(x.view(b, c, side, side), (k, k, k, k))
    dy, dx = torch.randint(0, 2 * k + 1, (2, b), generator=generator, device=generator.device).to(x.device)
    ar = torch.arange(side, device=x.device)
    rows, cols = (dy[:, None] + ar)[:, None, :, None], (dx[:, None] + ar)[:, None, None, :]
    idx_b = torch.arange(b, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return img[idx_b, idx_c, rows, cols].reshape(b, -1)


def warp(img: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Images (b, c, h, w) resampled bilinearly at displaced pixel positions: output pixel (i, j)
    reads the input at (i + field[:, 1, i, j], j + field[:, 0, i, j]) (pixels; zero outside)."""
    b, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device, dtype=img.dtype),
                            torch.arange(w, device=img.device, dtype=img.dtype), indexing="ij")
    gx = (xs + field[:, 0]) * (2.0 / (w - 1)) - 1.0  # grid_sample's [-1, 1] with align_corners=True
    gy = (ys + field[:, 1]) * (2.0 / (h - 1)) - 1.0
    return F.grid_sample(img, torch.stack((gx, gy), dim=-1), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def elastic_distort(x: torch.Tensor, alpha: float, sigma: float, generator: torch.Generator,
                    side: int = 28) -> torch.Tensor:
    """Simard, Steinkraus & Platt, "Best practices for convolutional neural networks applied to
    visual document analysis" (ICDAR 2003), section 2: each flattened image (channel-major, any
    number of channels, all moved alike) resampled through its own displacement field, uniform in
    [-1, 1] per pixel and axis, smoothed by a Gaussian of std ``sigma`` pixels (zero beyond the
    border) and scaled by ``alpha`` pixels. alpha 0: the images unchanged."""
    if alpha <= 0:
        return x
    b, n = x.shape
    c = _channels(n, side, "elastic_distort")
    field = torch.rand((b * 2, 1, side, side), generator=generator, device=generator.device).to(x.device) * 2 - 1
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    field = F.conv2d(field.to(x.dtype), k.view(1, 1, 1, -1), padding=(0, r))
    field = F.conv2d(field, k.view(1, 1, -1, 1), padding=(r, 0)).view(b, 2, side, side) * alpha
    return warp(x.view(b, c, side, side), field).reshape(b, n)


# ---------------------------------------------------------------------------------------------
# 4. The FF network
# ---------------------------------------------------------------------------------------------
class FFNet(LayerStackState, nn.Module):
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
                                          init_range=cfg.analog_init_range, reads=cfg.analog_reads,
                                          input_gain=math.sqrt(n_in) if i > 0 and cfg.norm == "length" else 1.0,
                                          crossbar=None if crossbar_factory is None else
                                          crossbar_factory(n_in + int(cfg.analog_bias), n_out, cfg.seed * 1000 + i)))
        self.layers = nn.ModuleList(layers)
        for i, n in enumerate(dims[1:]):  # batch-norm statistics (used only when norm="batch")
            self.register_buffer(f"bn_mean{i}", torch.zeros(n))
            self.register_buffer(f"bn_var{i}", torch.ones(n))
        if cfg.pairwise:  # the step count decides which layers learn (analogff.pairwise); it resumes with the net
            self.register_buffer("pair_step", torch.zeros((), dtype=torch.int64))
        if cfg.peer_norm > 0:  # running mean activity of every unit (peer normalisation), 0.5 at the start
            for i, n in enumerate(dims[1:]):
                self.register_buffer(f"peer_mean{i}", torch.full((n,), 0.5))
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes) goodness per label: the FF net's class scores."""
        return self.goodness_per_label(x)

    # -- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_per_label(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes): goodness summed over layers >= goodness_from, with each label overlaid.

        ``config.label_readout`` says how the k label trials of each sample are read:

        * ``"overlay"``: k full passes through every layer, label c overlaid on the image in pass c.
        * ``"shared"``: the first layer is linear in its input and the k trials differ only in their
          label pixels: it reads the image rows (and the bias row) once per sample and adds the label
          rows' contribution ``label_value * W[:, c]`` digitally (a digital layer: from its weights;
          an analog one: each label row driven alone, ``label_reads`` reads averaged, once per
          batch). The trials then share one read of the image, its noise and its clipping; 1 + k/B
          first-layer MVMs per sample instead of k. Deeper layers: k full passes.
        * ``"differential"``: "shared", and every deeper *analog* layer reads the mean ``u0`` of the
          trials' inputs once per sample and each trial's difference ``u_c - u0`` (k + 1 MVMs, not
          k), adding the two outputs digitally (the array is linear). An abs-max scaled read has
          output noise proportional to the largest value it drives, so the difference read, which
          carries what tells the labels apart, is read with the noise of its own small range.
          Digital layers compute exactly anyway: k full passes.
        """
        cfg, k = self.config, self.config.num_classes
        b = x.shape[0]
        if cfg.label_readout == "overlay":
            labels = torch.arange(k, device=x.device).repeat_interleave(b)
            hs = self.activities(overlay_label(x.repeat(k, 1), labels, k, cfg.label_value))
        else:
            hs = readout.label_trial_activities(self, x)
        score = sum(goodness(h, cfg.goodness, cfg.goodness_p) for h in hs[self.goodness_from:])
        self.counters += self._goodness_cost(hs[self.goodness_from:])
        if cfg.goodness_sign == "min":  # the lowest goodness wins
            score = -score
        return score.view(k, b).t()

    def _goodness_cost(self, hs: list[torch.Tensor]) -> OpCounts:
        """Digital work of the goodness of activities hs: sum of squares (sum, mean), a sum (abs), or
        a power per activity, a sum and a root per row (pnorm)."""
        n = sum(h.numel() for h in hs)
        if self.config.goodness == "abs":
            return OpCounts(digital_ops=n)
        if self.config.goodness == "pnorm":
            return OpCounts(digital_ops=n, digital_special_ops=n + sum(h.shape[0] for h in hs))
        return cost.goodness_scores(n)

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
        if cfg.collaborative:
            out["layer_losses"] = losses = self._collaborative_step(inp, b, generator, lr, epoch)
            out["loss"] = sum(losses)
            return out
        losses = []
        below = None  # pairwise learning: (layer, its input, its activities), waiting for the error from above
        for i, layer in enumerate(self.layers):
            h = self._relu(layer(inp))
            if cfg.pairwise and not pairwise.learns_from_own_loss(i, int(self.pair_step)):
                below = (layer, inp, h)  # no loss of its own this step: the layer above teaches it
                inp = self._dropout(self.normalize(i, h, update_stats=True), generator)
                continue
            loss, d = ff_loss_and_error(h[:b], h[b:], cfg)
            self.counters += cost.ff_layer_loss(b, h.shape[1])
            loss = self._peer_norm(i, h, b, d, loss)
            _check_finite(loss, f"layer {i}", epoch, lr)
            next_inp = self.normalize(i, h, update_stats=True)  # (last layer: for the head / BN stats)
            if below is not None:  # before this layer's update: the error crosses its current weights
                self._teach_below(*below, layer, d, lr)
                below = None
            layer.apply_update(inp, d, lr)
            losses.append(float(loss))
            inp = self._dropout(next_inp, generator) if i + 1 < len(self.layers) else next_inp
        if cfg.pairwise:
            self.pair_step += 1
        out["layer_losses"] = losses
        out["loss"] = sum(losses)
        return out

    def _collaborative_step(self, inp: torch.Tensor, b: int, generator: torch.Generator, lr: float,
                            epoch: int | None) -> list[float]:
        """Layer collaboration (``config.collaborative``): the forward pass of every layer first, then
        each layer's local error from the goodness summed over all layers (its own varying, the
        others' constant), then the updates. Returns the layer losses (each the loss of the total)."""
        cfg = self.config
        inputs, hs = [], []
        for i, layer in enumerate(self.layers):
            h = self._relu(layer(inp))
            inputs.append(inp)
            hs.append(h)
            if i + 1 < len(self.layers):
                inp = self._dropout(self.normalize(i, h, update_stats=True), generator)
            else:
                self.normalize(i, h, update_stats=True)  # (the BN statistics of the last layer, for the head)
        g = [goodness(h, cfg.goodness, cfg.goodness_p) for h in hs]
        total = torch.stack(g).sum(0)  # (2B,): the goodness of every layer, added per row
        if len(hs) > 1:  # per row: the layers' goodness added, then each layer's own taken off
            self.counters += OpCounts(digital_ops=(len(hs) - 1) * 2 * b + len(hs) * 2 * b)
        losses = []
        for i, (layer, x_i, h) in enumerate(zip(self.layers, inputs, hs)):
            rest = total - g[i]
            loss, d = ff_loss_and_error(h[:b], h[b:], cfg, others=(rest[:b], rest[b:]))
            self.counters += cost.ff_layer_loss(b, h.shape[1])
            loss = self._peer_norm(i, h, b, d, loss)
            _check_finite(loss, f"layer {i}", epoch, lr)
            layer.apply_update(x_i, d, lr)
            losses.append(float(loss))
        return losses

    def _peer_norm(self, i: int, h: torch.Tensor, b: int, d: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Peer normalisation of layer i (``config.peer_norm``, 0: off): its error added to the positive
        rows of d (in place), its running means kept; returns the loss with it."""
        if self.config.peer_norm <= 0:
            return loss
        running = getattr(self, f"peer_mean{i}")
        p_loss, d_peer, r = peer_norm_loss_and_error(h[:b], running, self.config.peer_norm)
        d[:b] += d_peer
        running.copy_(r)
        n = h.shape[1]  # the batch mean, r, its deviations, the error: per value and per unit
        self.counters += OpCounts(digital_ops=3 * b * n + 4 * n, digital_mults=2 * b * n + 4 * n)
        return loss + p_loss

    def _dropout(self, h: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Inverted dropout of a layer's input (``config.dropout``): the periphery draws one uniform
        per value, compares it with p and scales the kept values (counted)."""
        p = self.config.dropout
        if p <= 0:
            return h
        keep = torch.rand(h.shape, generator=generator, device=generator.device).to(h.device) >= p
        self.counters += cost.dropout(h.shape[0], h.shape[1])
        return h * keep.to(h.dtype) * (1.0 / (1.0 - p))

    def _teach_below(self, low, x_low: torch.Tensor, h_low: torch.Tensor, up, d_up: torch.Tensor, lr: float) -> None:
        """Pairwise learning: the upper layer's local error d_up, taken back through its weights
        (``error_through``: a transposed MVM on an array), the normalisation and the ReLU of the
        layer below, updates that layer: its error from the loss above (analogff.pairwise)."""
        g = up.error_through(d_up)  # dLoss/d(the lower layer's normalised activities)
        if self.config.norm == "length":
            dh = pairwise.length_norm_backward(h_low, g, self.config.eps)
        else:
            dh = pairwise.batch_norm_backward(h_low, g)
        self.counters += cost.norm_backward(h_low.shape[0], h_low.shape[1], self.config.norm)
        low.apply_update(x_low, dh * (h_low > 0).to(dh.dtype), lr)

    # counts and state (total_counts, periphery_state_bytes, optim_state): layers.LayerStackState


def _check_finite(t: torch.Tensor, where: str, epoch: int | None, lr: float) -> None:
    """Raise a FloatingPointError that names the layer and epoch if t holds NaN or inf."""
    if t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t.detach()))).all()):  # one pass
        when = f"epoch {epoch}" if epoch is not None else "this step"
        raise FloatingPointError(f"non-finite loss/activity (NaN or inf) in {where} at {when}: the weights "
                                 f"diverged; try a lower learning rate (lr={lr:g})")
