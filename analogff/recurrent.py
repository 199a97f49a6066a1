"""Hinton's recurrent Forward-Forward net with top-down connections, on digital layers or crossbars.

Source: G. Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", arXiv
2212.13345 (2022), section "Using FF to model top-down effects in perception". A static image is
treated as a boring video: the bottom layer is the pixel image, the top layer a one-of-N label, and
each hidden layer's state at time t is computed from the *normalised* states of the layer below
and the layer above at time t-1. All hidden layers are updated synchronously with damping: the new
pre-normalised state is 0.3 x the previous one plus 0.7 x the computed one. Hidden layers start
from a single bottom-up pass; the net then runs 8 iterations. Test: 8 iterations with each of the
10 labels at the top, and the label with the highest goodness averaged over iterations 3 to 5
wins. Negatives: one forward pass of the net gives class probabilities; the negative label is drawn
among the wrong classes in proportion to them. Reported: 1.31 % test error on MNIST after 60
epochs, with "two or three" hidden layers of 2000 ReLUs (784-2000-2000(-2000)-10; not the 4 x 2000
of its feed-forward nets). The paper's code is not public, so everything it leaves open is a choice,
listed below. (Checked here against a secondary summary of that section, which agrees on the
normalised neighbours at t-1, the 0.3/0.7 damping, 8 synchronous iterations, the clamped label,
the 3-5 readout and 1.31 %; the layer sizes and the initial bottom-up pass are quoted from memory
of the paper and were not re-checked against its text.)

One iteration t = 1..T, hidden layer i of L (state h_i, pre-normalised, i.e. after the ReLU)::

    z_i(t)  = U_i norm(h_{i-1}(t-1)) + D_i norm(h_{i+1}(t-1))     (h_{-1}: image, h_L: one-hot label)
    h_i(t)  = 0.3 h_i(t-1) + 0.7 relu(z_i(t))
    G_i(t)  = goodness(h_i(t))                                     (FFConfig.goodness: sum of squares)

``U_i`` (bottom-up, with the bias) and ``D_i`` (top-down, no bias) are *separate layers*
(:class:`analogff.layers.DigitalLayer` or :class:`~analogff.layers.AnalogLayer`): on an array the
top-down connections are more forward MVMs on their own tiles, never a transposed MVM, so the
crossbars' ``backward_*`` counters stay 0.

Learning (local, no gradient through time or across layers): at every training iteration t the FF
loss of layer i on its own goodness G_i(t), positive rows (true label at the top) against negative
rows (a wrong label), gives ``d = dL/dz_i(t)`` from :func:`analogff.ff.ff_loss_and_error` times the
damping's 0.7 and the ReLU's mask (h_i(t-1) treated as a constant). The same d updates both
inputs of the layer, U_i with the normalised state below and D_i with the one above (W <- W - lr
d^T x, one ``apply_update`` per layer and step, the mean over the training iterations).

Choices and differences from the paper
--------------------------------------
* Objective at **every** iteration 1..8 by default (``train_iterations``): FF "runs forwards in
  time" and each time step is a positive or negative frame; the paper does not say. The weights are
  held fixed during the 8 iterations and each layer gets one update per step: the mean of its
  per-iteration updates (the paper does not say when it updates).
* The initial bottom-up pass carries no top-down input (not even the label): it is label-free, so
  it is run once per image and shared by the positive, negative and the 10 test label trials.
* The image term U_0 x of the bottom layer is the same at every iteration: it is read once per image
  and kept in SRAM (counted), not re-read 8 times. Likewise the label's and the image's constant
  inputs let the update of U_0 and of the top D use the error summed over iterations (and over the
  positive and negative rows for U_0): the same d^T x with fewer rank-one updates.
* Prediction runs ``max(readout_iterations)`` iterations (5), not 8: iterations 6-8 cannot change
  a readout averaged over 3-5, so their reads would be wasted; ``predict_iterations`` restores 8.
* Hard negatives ("one forward pass of the net"): the paper does not say how a single pass yields
  class probabilities. Here (``negatives="hard"``, ``hard_source="head"``): the label-free
  bottom-up pass, then the top hidden layer's goodness under each label c, G_c = goodness(relu(z_top
  + D_top e_c)) (the k label columns of D_top read once per batch), and p = softmax(alpha G).
  ``hard_source="goodness"`` instead uses the full recurrent label trials (10 x 5 iterations);
  ``negatives="random"`` draws uniformly among the wrong labels.
* Goodness of prediction: the sum over all hidden layers (``goodness_from=0``); FFNet's default skips
  the first layer. The paper does not say which layers count.
* Losses, goodness kind, optimiser: the FFConfig's (default SymBa, sum goodness, Adam), not
  Hinton's threshold loss; the image is fed as is (no label overlaid on its first pixels, the label
  is the top layer). Only length normalisation (``norm="length"``) is supported. No softmax head
  (``head`` is None; FFConfig.head, head_from, label_readout are not used); no peer normalisation
  (``peer_norm`` must be 0). FFConfig's goodness kinds, ``goodness_sign="min"`` (the lowest goodness
  wins, and the one-pass probabilities are softmax(-alpha G)) and ``loss_fn`` apply as in FFNet.

Counts: every digital operation is added to ``self.counters`` with the primitives of
:mod:`analogff.accounting` beside the work (normalisations, ReLUs, the damping's multiplies and
adds, goodness, loss and local errors, the SRAM traffic of the kept states); digital layers count
their MACs and updates, crossbars their MVMs and conversions. The 10 label trials x iterations of
prediction are real passes through the layers and are counted the same way.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from analogff import accounting as cost
from analogff.energy import OpCounts
from analogff.ff import (FFConfig, _check_finite, ff_loss_and_error, goodness, hard_wrong_labels,
                         random_wrong_labels)
from analogff.layers import AnalogLayer, DigitalLayer, LayerStackState

__all__ = ["RecurrentFFNet", "DAMPING", "ITERATIONS", "READOUT_ITERATIONS"]

#: fraction of the previous pre-normalised state kept at each iteration (Hinton: 0.3)
DAMPING = 0.3
#: synchronous iterations after the bottom-up initialisation (Hinton: 8)
ITERATIONS = 8
#: iterations whose goodness is averaged for prediction (Hinton: 3 to 5), 1-based
READOUT_ITERATIONS = (3, 4, 5)


def _iteration_set(name: str, values: Sequence[int], iterations: int) -> tuple[int, ...]:
    """Sorted unique 1-based iteration numbers, each in 1..iterations, or a ValueError."""
    out = tuple(sorted({int(v) for v in values}))
    if not out or out[0] < 1 or out[-1] > iterations:
        raise ValueError(f"{name}={tuple(values)!r}; choose a non-empty set of iterations in 1..{iterations}")
    return out


class RecurrentFFNet(LayerStackState, nn.Module):
    """Hinton's recurrent top-down FF net: ``dims = [784, n1, ..., nL, classes]``.

    ``layer``: "digital" or "analog" (crossbars of the profile ``device``: a ``DeviceProfile`` or a
    TOML path); ``crossbar_factory(n_rows, n_cols, seed)`` builds the crossbars instead (tests).
    ``layers`` holds the L bottom-up layers U_0..U_{L-1} (``up``) then the L top-down ones
    D_0..D_{L-1} (``down``; D_i reads layer i+1, D_{L-1} the label). ``iterations``: synchronous
    iterations after the bottom-up pass; ``damping``: the previous state's share;
    ``train_iterations`` (default all) / ``readout_iterations``: 1-based iterations where the FF
    objective is applied / whose goodness is averaged for prediction; ``predict_iterations``:
    iterations run when predicting (default the last readout iteration); ``goodness_from``: the
    first hidden layer whose goodness counts for prediction.
    """

    readouts = ("goodness",)

    def __init__(self, dims: Sequence[int], layer: str = "digital", device=None, config: FFConfig | None = None,
                 crossbar_factory: Callable | None = None, *, iterations: int = ITERATIONS,
                 damping: float = DAMPING, train_iterations: Sequence[int] | None = None,
                 readout_iterations: Sequence[int] = READOUT_ITERATIONS, predict_iterations: int | None = None,
                 goodness_from: int = 0):
        super().__init__()
        cfg = config if config is not None else FFConfig()
        if layer not in ("digital", "analog"):
            raise ValueError(f"layer={layer!r}; choose 'digital' or 'analog'")
        dims = [int(d) for d in dims]
        if len(dims) < 3:
            raise ValueError(f"dims={dims}; give [input, hidden..., classes] with at least one hidden layer")
        if dims[-1] != cfg.num_classes:
            raise ValueError(f"dims[-1]={dims[-1]} is the label layer; make it FFConfig.num_classes={cfg.num_classes}")
        if cfg.norm != "length":
            raise ValueError(f"FFConfig.norm={cfg.norm!r}; the recurrent net supports only norm='length'")
        if cfg.peer_norm:
            raise ValueError(f"FFConfig.peer_norm={cfg.peer_norm!r}; the recurrent net has no peer normalisation, set 0")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations={iterations!r}; choose an integer >= 1")
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"damping={damping!r}; choose a fraction in [0, 1)")
        self.iterations, self.damping = iterations, float(damping)
        self.train_iterations = _iteration_set(
            "train_iterations", range(1, iterations + 1) if train_iterations is None else train_iterations, iterations)
        self.readout_iterations = _iteration_set("readout_iterations", readout_iterations, iterations)
        if predict_iterations is None:
            predict_iterations = self.readout_iterations[-1]
        if not self.readout_iterations[-1] <= predict_iterations <= iterations:
            raise ValueError(f"predict_iterations={predict_iterations!r}; choose from "
                             f"{self.readout_iterations[-1]} (the last readout iteration) to {iterations}")
        self.predict_iterations = int(predict_iterations)
        n_hidden = len(dims) - 2
        if not 0 <= goodness_from < n_hidden:
            raise ValueError(f"goodness_from={goodness_from!r}; choose a hidden layer index in 0..{n_hidden - 1}")
        self.goodness_from = goodness_from
        self.config, self.dims, self.layer_kind = cfg, dims, layer
        self.head = None
        self.counters = OpCounts()  #: training work of the periphery / digital layers
        self.eval_counters = OpCounts()  #: evaluation done by train_ff (test accuracy)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # where the net lives
        gen = torch.Generator().manual_seed(cfg.seed)

        def build(n_in: int, n_out: int, bias: bool, seed: int, gain: float):
            if layer == "digital":
                return DigitalLayer(n_in, n_out, lr=cfg.lr, optimizer=cfg.optimizer, betas=cfg.betas,
                                    momentum=cfg.momentum, weight_decay=cfg.weight_decay, bias=bias,
                                    generator=gen, counters=self.counters)
            bias = bias and cfg.analog_bias
            return AnalogLayer(n_in, n_out, device=device, update=cfg.analog_update, bias=bias,
                               momentum=cfg.momentum, betas=cfg.betas, seed=seed, engine=cfg.engine,
                               counters=self.counters, init_range=cfg.analog_init_range, input_gain=gain,
                               reads=cfg.analog_reads, crossbar=None if crossbar_factory is None else
                               crossbar_factory(n_in + int(bias), n_out, seed))

        hidden = dims[1:-1]
        up = [build(dims[i], n, True, cfg.seed * 1000 + i, math.sqrt(dims[i]) if i > 0 else 1.0)
              for i, n in enumerate(hidden)]
        # top-down: from the hidden layer above (normalised, gain as FFNet's deeper layers) or the label
        down = [build(dims[i + 2], n, False, cfg.seed * 1000 + 500 + i,
                      math.sqrt(dims[i + 2]) if i + 1 < n_hidden else 1.0) for i, n in enumerate(hidden)]
        self.n_hidden = n_hidden
        self.layers = nn.ModuleList([*up, *down])
        # the residency rule of FFNet: training state (weights, grads, optimiser) or inference state
        self.resident_bytes = sum(lay.resident_bytes for lay in self.layers)
        self.inference_resident_bytes = sum(cost.BYTES_PER_VALUE * lay.n_params for lay in self.layers
                                            if isinstance(lay, DigitalLayer))
        self.train(self.training)

    # -- structure --------------------------------------------------------------------------------
    @property
    def up(self) -> list[nn.Module]:
        """Bottom-up layers U_0..U_{L-1} (U_i reads the image or hidden layer i-1)."""
        return list(self.layers[:self.n_hidden])

    @property
    def down(self) -> list[nn.Module]:
        """Top-down layers D_0..D_{L-1} (D_i reads hidden layer i+1, D_{L-1} the label)."""
        return list(self.layers[self.n_hidden:])

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    # -- the digital pieces, each counted --------------------------------------------------------
    def _normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Length normalisation (divide by the RMS), FFNet's."""
        b, n = h.shape
        self.counters += cost.length_norm(b, n)
        return h / (h.pow(2).mean(1, keepdim=True).sqrt() + self.config.eps)

    def _damped(self, h_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """damping * h_prev + (1 - damping) * relu(z): a ReLU, two multiplies and an add per unit."""
        a = self._relu(z)
        self.counters += OpCounts(digital_mults=2 * z.numel(), digital_ops=z.numel())
        return self.damping * h_prev + (1.0 - self.damping) * a

    def _add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.counters += OpCounts(digital_ops=a.numel())
        return a + b

    def _goodness(self, h: torch.Tensor) -> torch.Tensor:
        """Goodness of each row (FFConfig.goodness), counted as FFNet counts it."""
        cfg, n = self.config, h.numel()
        if cfg.goodness == "abs":
            self.counters += OpCounts(digital_ops=n)
        elif cfg.goodness == "pnorm":
            self.counters += OpCounts(digital_ops=n, digital_special_ops=n + h.shape[0])
        else:
            self.counters += cost.goodness_scores(n)
        return goodness(h, cfg.goodness, cfg.goodness_p)

    @property
    def _sign(self) -> float:
        """+1: high goodness means positive (FFConfig.goodness_sign="max"); -1: Hinton's "min ssq"."""
        return -1.0 if self.config.goodness_sign == "min" else 1.0

    def _label_rows(self, labels: torch.Tensor) -> torch.Tensor:
        """The clamped top layer: one-hot labels times FFConfig.label_value, (R, classes)."""
        k = self.config.num_classes
        return F.one_hot(labels, k).to(self._anchor.dtype) * self.config.label_value

    # -- the dynamics -----------------------------------------------------------------------------
    def _bottom_up(self, x: torch.Tensor):
        """The label-free initial pass on images x (B, n_in): (U_0 x, the cached image term; states
        h_i(0); their normalisations, computed where a neighbour reads them, else None; the top
        hidden layer's pre-activation)."""
        z_img = self.up[0](x)
        self.counters += OpCounts(sram_bytes=cost.BYTES_PER_VALUE * z_img.numel())  # kept for every iteration
        hs, ns = [], []
        z = z_img
        for i in range(self.n_hidden):
            if i > 0:
                z = self.up[i](ns[i - 1])
            hs.append(self._relu(z))
            ns.append(self._normalize(hs[i]) if i + 1 < self.n_hidden else None)
        return z_img, hs, ns, z

    @torch.no_grad()
    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised states of every hidden layer after the label-free bottom-up pass on images x:
        what a linear probe of each layer reads (analogff.probes). No label reaches them."""
        _, hs, _, _ = self._bottom_up(x)
        return [self._normalize(h) for h in hs]

    def _iterate(self, z_img: torch.Tensor, hs: list[torch.Tensor], ns: list[torch.Tensor | None],
                 top: torch.Tensor):
        """One synchronous iteration: from states hs (and their normalisations ns, filled in where
        missing) at t-1 to (new states, the pre-activations z, the normalised inputs read)."""
        n_h = self.n_hidden
        ns = list(ns)
        for i in range(n_h):
            if ns[i] is None and (i + 1 < n_h or i > 0):  # read by U_{i+1} or D_{i-1}
                ns[i] = self._normalize(hs[i])
        self.counters += OpCounts(sram_bytes=cost.BYTES_PER_VALUE * z_img.numel())  # the cached image term
        new_h, zs, ups, downs = [], [], [], []
        for i in range(n_h):
            x_up = None if i == 0 else ns[i - 1]
            x_down = top if i + 1 == n_h else ns[i + 1]
            z_up = z_img if i == 0 else self.up[i](x_up)
            z = self._add(z_up, self.down[i](x_down))
            new_h.append(self._damped(hs[i], z))
            zs.append(z)
            ups.append(x_up)
            downs.append(x_down)
        return new_h, zs, ups, downs

    def _expand(self, z_img, hs, ns, reps: int):
        """The shared bottom-up pass repeated for ``reps`` label trials (rows trial-major)."""
        rep = (lambda t: None if t is None else t.repeat(reps, 1))
        return rep(z_img), [rep(h) for h in hs], [rep(n) for n in ns]

    # -- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_per_label(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes): goodness summed over hidden layers >= goodness_from, averaged over the
        readout iterations, with each label clamped at the top (the bottom-up pass shared)."""
        k, b = self.config.num_classes, x.shape[0]
        z_img, hs, ns = self._expand(*self._bottom_up(x)[:3], k)
        top = self._label_rows(torch.arange(k, device=x.device).repeat_interleave(b))
        score = torch.zeros(k * b, dtype=z_img.dtype, device=z_img.device)
        for t in range(1, self.predict_iterations + 1):
            hs, _, _, _ = self._iterate(z_img, hs, ns, top)
            ns = [None] * self.n_hidden
            if t in self.readout_iterations:
                g = sum(self._goodness(h) for h in hs[self.goodness_from:])
                score = self._add(score, g)
        self.counters += OpCounts(digital_mults=k * b)  # the mean: times 1 / len(readout)
        score = self._sign * score / len(self.readout_iterations)  # "min": the lowest goodness wins
        return score.view(k, b).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes) goodness per label: the net's class scores."""
        return self.goodness_per_label(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, method: str = "goodness") -> torch.Tensor:
        if method == "goodness":
            return self.goodness_per_label(x).argmax(1)
        if method == "softmax":
            raise ValueError("the recurrent FF net has no softmax head; predict with method='goodness'")
        raise ValueError(f"method={method!r}; choose 'goodness'")

    # -- negatives --------------------------------------------------------------------------------
    def _one_pass_probs(self, z_top: torch.Tensor, epoch: int | None, lr: float) -> torch.Tensor:
        """Class probabilities from one pass: the bottom-up pass's input to the top hidden layer
        plus each label's top-down column, the top layer's goodness per label, softmax(alpha G)."""
        cfg, k, top_i = self.config, self.config.num_classes, self.n_hidden - 1
        b = z_top.shape[0]
        cols = self.down[top_i](self._label_rows(torch.arange(k, device=z_top.device)))  # (k, n): k reads
        z = self._add(z_top.unsqueeze(1), cols.unsqueeze(0).expand(b, k, -1))  # (B, k, n)
        g = self._goodness(self._relu(z).reshape(b * k, -1)).view(b, k)
        _check_finite(g, f"hidden layer {top_i} (negatives)", epoch, lr)
        self.counters += cost.head_loss(b, k)  # the softmax (and no more: an upper bound of it)
        return torch.softmax(cfg.alpha * self._sign * g, 1)

    # -- one training step ------------------------------------------------------------------------
    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                   lr: float | None = None, head_lr: float | None = None, epoch: int | None = None) -> dict:
        """One step on a mini-batch: negatives, 8 iterations on [positive; negative] rows, one
        local update of every layer. Returns {"loss", "head_loss" (nan), "layer_losses"}.
        Raises FloatingPointError on a non-finite loss or state."""
        cfg, k, n_h = self.config, self.config.num_classes, self.n_hidden
        lr = cfg.lr if lr is None else lr
        b = x.shape[0]
        z_img, hs0, ns0, z_top = self._bottom_up(x)
        for i, h in enumerate(hs0):
            _check_finite(h, f"hidden layer {i}", epoch, lr)
        if cfg.negatives == "random":
            y_neg = random_wrong_labels(y, generator, k)
        else:
            if cfg.hard_source == "goodness":
                probs = torch.softmax(cfg.alpha * self.goodness_per_label(x), 1)
            else:
                probs = self._one_pass_probs(z_top, epoch, lr)
            y_neg = hard_wrong_labels(probs, y, generator)

        z_img2, hs, ns = self._expand(z_img, hs0, ns0, 2)  # rows: positives, then negatives
        top = self._label_rows(torch.cat([y, y_neg]))
        n_t = len(self.train_iterations)
        losses = [0.0] * n_h
        d_sum: list[torch.Tensor | None] = [None] * n_h  # errors summed over t (constant inputs)
        cat_x_up: list[list] = [[] for _ in range(n_h)]
        cat_x_down: list[list] = [[] for _ in range(n_h)]
        cat_d: list[list] = [[] for _ in range(n_h)]
        for t in range(1, self.train_iterations[-1] + 1):
            hs, zs, ups, downs = self._iterate(z_img2, hs, ns, top)
            ns = [None] * n_h
            if t not in self.train_iterations:
                continue
            for i in range(n_h):
                h, n = hs[i], hs[i].shape[1]
                loss, d = ff_loss_and_error(h[:b], h[b:], cfg)  # dL/d(state) x ... = dL/dG * dG/dh
                self.counters += cost.ff_layer_loss(b, n)
                _check_finite(loss, f"hidden layer {i}", epoch, lr)
                # through the damped update: dh/dz = (1 - damping) * relu'(z); divided by the
                # number of training iterations (the update is their mean)
                d = d * (zs[i] > 0).to(d.dtype) * ((1.0 - self.damping) / n_t)
                self.counters += OpCounts(digital_mults=2 * d.numel())
                losses[i] += float(loss) / n_t
                if i == 0 or i + 1 == n_h:  # a constant input (image / label): sum the errors over t
                    d_sum[i] = d if d_sum[i] is None else self._add(d_sum[i], d)
                if i > 0:
                    cat_x_up[i].append(ups[i])
                if i + 1 < n_h:
                    cat_x_down[i].append(downs[i])
                if i > 0 or i + 1 < n_h:  # a time-varying input: the iterations' rows concatenated
                    cat_d[i].append(d)
                # kept until the update: this iteration's inputs and error (SRAM, written once)
                n_in = (ups[i].shape[1] if i > 0 else 0) + (downs[i].shape[1] if i + 1 < n_h else 0)
                self.counters += OpCounts(sram_bytes=cost.BYTES_PER_VALUE * d.shape[0] * (n_in + n))
        for i, h in enumerate(hs):
            _check_finite(h, f"hidden layer {i}", epoch, lr)

        for i in range(n_h):  # every layer learns alone, from its own error
            if i == 0:  # the image is the same for every iteration and for the positive and negative rows
                self.up[0].apply_update(x, self._add(d_sum[0][:b], d_sum[0][b:]), lr)
            else:
                self.up[i].apply_update(torch.cat(cat_x_up[i]), torch.cat(cat_d[i]), lr)
            if i + 1 == n_h:  # the clamped label, the same at every iteration
                self.down[i].apply_update(top, d_sum[i], lr)
            else:
                self.down[i].apply_update(torch.cat(cat_x_down[i]), torch.cat(cat_d[i]), lr)
        return {"loss": sum(losses), "head_loss": float("nan"), "layer_losses": losses}

    # counts and state (total_counts, periphery_state_bytes, optim_state): layers.LayerStackState (head None)
