"""Unsupervised Forward-Forward with hybrid negatives and a linear softmax head (Hinton 2022, §3.2).

Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", arXiv 2212.13345,
section "A simple unsupervised example of FF":

* Negative data must have very different long-range correlations but similar short-range ones. A
  mask with fairly large regions of ones and zeros is made from a random bit image, blurred
  repeatedly with the filter [1/4, 1/2, 1/4] horizontally and vertically and thresholded at 0.5;
  a hybrid image is one digit image times the mask plus a different digit image times the reverse
  of the mask: ``x1 * m + x2 * (1 - m)`` (:func:`hybrid_mask`, :func:`hybrid_negatives`).
* The net is trained by FF without labels (positive: real images; negative: hybrids). Then a
  linear softmax on the normalised activity vectors of the last three of four hidden layers is
  trained to predict the label (including the first hidden layer made it worse). Reported: 1.37 %
  test error with four hidden layers of 2000 ReLUs after 100 epochs; with local receptive fields
  (no weight sharing, :mod:`analogff.locally_connected`) 1.16 % after 60 epochs.

Here, :class:`UnsupervisedFFNet` does exactly that on digital layers or on crossbars of any device
profile, one step at a time (``train_step``): the hybrids of the mini-batch are made in the
periphery, positive and negative rows go through each layer together, each layer learns locally
(:func:`analogff.ff.ff_loss_and_error`, W <- W - lr d^T x), activities are length-normalised
between layers, and the softmax head (a digital layer with Adam, as ``FFNet``'s) is trained in the
same step on the detached normalised activities of the positive rows of layers >= ``head_from``:
no gradient reaches a hidden layer. :func:`analogff.train.train_ff` drives it unchanged.

Differences from the paper (each a choice made here):

* The head is trained alongside the layers, in every step, on the activities the step computed
  anyway (the paper allows "afterwards or alongside"); test accuracy reads the head only.
* The number of blurring passes is not given in the paper ("repeatedly"): ``blurs=6`` by default;
  the blur's edges are replicate-padded. Each negative is paired with another image of the same
  mini-batch (a cyclic shift by a random non-zero offset), so the two sources are always different
  images; hybrids are regenerated every step.
* The layer loss is ``FFConfig.loss`` (SymBa by default; ``loss="hinton"`` is the paper's
  threshold loss); the goodness and optimiser are the config's (the paper's unsupervised net used
  sum-of-squares goodness; its optimiser settings are not given).
* No "peer normalization" (the paper's local net used it, appendix A). Only ``norm="length"``.
* The benchmarks here train smaller nets for fewer epochs (benchmarks/ff_unsupervised.py).

Counting: everything digital is counted with :mod:`analogff.accounting` primitives or OpCounts
fields into ``net.counters``: the masks and hybrids (:func:`hybrid_counts`, per negative image),
ReLU, normalisation, goodness and loss, the head's forward, loss and update; each layer counts its
own MACs/optimiser (digital) or periphery I/O and the crossbar's analog work (analog).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from analogff import accounting as cost
from analogff.energy import OpCounts
from analogff.ff import FFConfig, _check_finite, ff_loss_and_error
from analogff.layers import AnalogLayer, DigitalLayer, LayerStackState
from analogff.locally_connected import LOCAL_ARCHITECTURES, LocalAnalogLayer, LocalDigitalLayer, LocalSpec

__all__ = ["BLUR_KERNEL", "hybrid_mask", "hybrid_negatives", "hybrid_counts", "UnsupervisedFFNet"]

#: the paper's blurring filter, applied horizontally and vertically
BLUR_KERNEL = (0.25, 0.5, 0.25)


def hybrid_mask(n: int, side: int, generator: torch.Generator, blurs: int = 6, threshold: float = 0.5,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` binary masks (n, side * side) float 0/1: a random bit image (each pixel 1 with
    probability 1/2), blurred ``blurs`` times with [1/4, 1/2, 1/4] along rows and along columns
    (replicate-padded edges), thresholded at ``threshold`` (> is 1). Random numbers from
    ``generator`` (on its device), result on ``device`` (default: the generator's)."""
    if blurs < 0 or side < 1 or n < 0:
        raise ValueError(f"hybrid_mask(n={n}, side={side}, blurs={blurs}): need n >= 0, side >= 1, blurs >= 0")
    bits = (torch.rand(n, 1, side, side, generator=generator, device=generator.device) < 0.5).float()
    m = bits.to(device) if device is not None else bits
    k = torch.tensor(BLUR_KERNEL, dtype=m.dtype, device=m.device)
    kh, kv = k.view(1, 1, 1, 3), k.view(1, 1, 3, 1)
    for _ in range(blurs):
        m = F.conv2d(F.pad(m, (1, 1, 0, 0), mode="replicate"), kh)
        m = F.conv2d(F.pad(m, (0, 0, 1, 1), mode="replicate"), kv)
    return (m > threshold).to(m.dtype).reshape(n, side * side)


def hybrid_counts(n: int, side: int, channels: int = 1, blurs: int = 6) -> OpCounts:
    """Digital work of making ``n`` masks and hybrids in the periphery (random bits drawn by a
    generator are not priced): per mask pixel one compare for the bit, per blur pass and direction
    3 multiplies and 2 adds (the mask read and written once, SRAM), one compare for the threshold,
    one subtraction for 1 - m; per image value 2 multiplies and an add (x1 m + x2 (1 - m)), the two
    sources read and the hybrid written (SRAM)."""
    p, v = n * side * side, n * side * side * channels
    return OpCounts(digital_ops=p + blurs * 2 * 2 * p + p + p + v,
                    digital_mults=blurs * 2 * 3 * p + 2 * v,
                    sram_bytes=cost.BYTES_PER_VALUE * (blurs * 2 * 2 * p + 3 * v))


def hybrid_negatives(x: torch.Tensor, generator: torch.Generator, side: int | None = None, blurs: int = 6,
                     return_parts: bool = False):
    """Hybrid negatives of a mini-batch x (B, channels * side^2), B >= 2: image i mixed with image
    (i + s) mod B, s uniform in 1..B-1 (always another image), through its own mask:
    ``x[i] * m_i + x[j] * (1 - m_i)``; one mask per image, shared by its channels (planes laid out
    channel-major, as CIFAR-10's). ``side`` defaults to sqrt(B-features) (one channel).
    ``return_parts``: also the masks (B, side^2) and the partner indices j (B,)."""
    b, n = x.shape
    if b < 2:
        raise ValueError(f"hybrid negatives mix two different images; the mini-batch has {b}: use batch_size >= 2")
    if side is None:
        side = math.isqrt(n)
    channels = n // (side * side)
    if channels * side * side != n:
        raise ValueError(f"{n} features are not channels x {side} x {side}; pass side= (e.g. 32 for CIFAR-10)")
    shift = int(torch.randint(1, b, (1,), generator=generator, device=generator.device))
    partner = (torch.arange(b, device=x.device) + shift) % b
    m = hybrid_mask(b, side, generator, blurs, device=x.device).to(x.dtype)
    mm = m.repeat(1, channels)
    neg = x * mm + x[partner] * (1 - mm)
    return (neg, m, partner) if return_parts else neg


class UnsupervisedFFNet(LayerStackState, nn.Module):
    """An FF net trained without labels on real (positive) and hybrid (negative) images, read by a
    linear softmax head on the normalised activities of layers >= ``head_from``.

    ``dims = [n_in, n1, n2, ...]``: fully connected layers; or ``local`` (a name of
    :data:`analogff.locally_connected.LOCAL_ARCHITECTURES` or a sequence of ``LocalSpec``) with
    ``in_shape`` (height, width, channels) and ``in_layout``: locally connected layers (see
    :meth:`from_architecture`). ``layer``: "digital" | "analog"; ``device``: the profile
    (DeviceProfile or TOML path) of analog layers; ``crossbar_factory(n_rows, n_cols, seed)``
    builds crossbars instead (tests). ``head_from`` (default ``config.head_from``: all but the
    first layer; the paper: the last three of four), clipped to the last layer. ``image_side``:
    side of the square images the masks are made for (default: from the input size / in_shape).
    """

    #: what test accuracy reads (train_ff evaluates the head only)
    readouts = ("softmax",)

    def __init__(self, dims: Sequence[int] | None = None, layer: str = "digital", device=None,
                 config: FFConfig | None = None, crossbar_factory: Callable | None = None,
                 head_from: int | None = None, blurs: int = 6, image_side: int | None = None,
                 local: str | Sequence[LocalSpec] | None = None, in_shape: tuple[int, int, int] = (28, 28, 1),
                 in_layout: str = "hwc"):
        super().__init__()
        if layer not in ("digital", "analog"):
            raise ValueError(f"layer={layer!r}; choose 'digital' or 'analog'")
        cfg = config if config is not None else FFConfig()
        if cfg.norm != "length":
            raise ValueError(f"FFConfig.norm={cfg.norm!r}: the unsupervised net normalises by length only; "
                             "use norm='length'")
        if (dims is None) == (local is None):
            raise ValueError("give either dims (fully connected) or local (an architecture name or LocalSpecs)")
        self.config, self.layer_kind, self.blurs = cfg, layer, int(blurs)
        self.counters = OpCounts()  #: training work of the periphery / digital layers
        self.eval_counters = OpCounts()  #: evaluation done by train_ff (test accuracy)
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)
        gen = torch.Generator().manual_seed(cfg.seed)
        if local is not None:
            if isinstance(local, str) and local not in LOCAL_ARCHITECTURES:
                raise ValueError(f"unknown local architecture {local!r}; choose one of {sorted(LOCAL_ARCHITECTURES)}")
            self.architecture = local if isinstance(local, str) else "custom"
            specs = LOCAL_ARCHITECTURES[local] if isinstance(local, str) else tuple(local)
            layers = self._local_layers(specs, tuple(in_shape), in_layout, layer, device, cfg, crossbar_factory, gen)
            self.dims = [int(math.prod(in_shape)), *(lay.n_out for lay in layers)]
            side = in_shape[0] if in_shape[0] == in_shape[1] else None
            self.image_channels = in_shape[2]
        else:
            if len(dims) < 2:
                raise ValueError("dims needs an input size and at least one layer size")
            self.architecture = "dense"
            self.dims = list(dims)
            layers = self._dense_layers(self.dims, layer, device, cfg, crossbar_factory, gen)
            side = math.isqrt(self.dims[0]) if math.isqrt(self.dims[0]) ** 2 == self.dims[0] else None
            self.image_channels = 1
        self.image_side = int(image_side) if image_side is not None else side
        if self.image_side is None:
            raise ValueError(f"input of {self.dims[0]} values is not a square image; pass image_side=")
        self.image_channels = self.dims[0] // (self.image_side ** 2)
        if self.image_channels * self.image_side ** 2 != self.dims[0]:
            raise ValueError(f"input of {self.dims[0]} values is not channels x {self.image_side}^2; fix image_side")
        self.layers = nn.ModuleList(layers)
        n = len(self.layers)
        self._head_from = min(cfg.head_from if head_from is None else int(head_from), n - 1)
        if self._head_from < 0:
            raise ValueError(f"head_from={head_from}; choose a layer index >= 0")
        n_head_in = sum(self.dims[1 + self._head_from:])
        self.head = (DigitalLayer(n_head_in, cfg.num_classes, lr=cfg.head_lr, optimizer="adam",
                                  generator=gen, counters=self.counters) if cfg.head else None)
        stateful = [*layers, *([self.head] if self.head is not None else [])]
        self.resident_bytes = sum(lay.resident_bytes for lay in stateful)
        self.inference_resident_bytes = sum(cost.BYTES_PER_VALUE * lay.n_params for lay in stateful
                                            if isinstance(lay, (DigitalLayer, LocalDigitalLayer)))
        self.train(self.training)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_architecture(cls, name: str, layer: str = "digital", device=None, config: FFConfig | None = None,
                          crossbar_factory: Callable | None = None, head_from: int | None = None,
                          in_shape: tuple[int, int, int] = (28, 28, 1), in_layout: str = "hwc",
                          **kwargs) -> "UnsupervisedFFNet":
        """A net of the named locally connected architecture (``LOCAL_ARCHITECTURES``), e.g.
        ``UnsupervisedFFNet.from_architecture("hinton_local", "analog", device="devices/ecram.toml")``."""
        if name not in LOCAL_ARCHITECTURES:
            raise ValueError(f"unknown local architecture {name!r}; choose one of {sorted(LOCAL_ARCHITECTURES)}")
        return cls(layer=layer, device=device, config=config, crossbar_factory=crossbar_factory, head_from=head_from,
                   local=name, in_shape=in_shape, in_layout=in_layout, **kwargs)

    def _dense_layers(self, dims, layer, device, cfg, factory, gen) -> list[nn.Module]:
        """FFNet's layers: DigitalLayer or AnalogLayer per (n_in, n_out), the same seeds and gains."""
        out = []
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            if layer == "digital":
                out.append(DigitalLayer(n_in, n_out, lr=cfg.lr, optimizer=cfg.optimizer, betas=cfg.betas,
                                        momentum=cfg.momentum, weight_decay=cfg.weight_decay, generator=gen,
                                        counters=self.counters))
            else:
                seed = cfg.seed * 1000 + i
                out.append(AnalogLayer(n_in, n_out, device=device, update=cfg.analog_update, bias=cfg.analog_bias,
                                       momentum=cfg.momentum, betas=cfg.betas, seed=seed, engine=cfg.engine,
                                       counters=self.counters, init_range=cfg.analog_init_range,
                                       reads=cfg.analog_reads, input_gain=math.sqrt(n_in) if i > 0 else 1.0,
                                       crossbar=None if factory is None else
                                       factory(n_in + int(cfg.analog_bias), n_out, seed)))
        return out

    def _local_layers(self, specs, in_shape, in_layout, layer, device, cfg, factory, gen) -> list[nn.Module]:
        """One locally connected layer per spec; the first reads the input in ``in_layout``, the
        others the location-major grid of the layer below."""
        out, shape, layout = [], in_shape, in_layout
        for i, spec in enumerate(specs):
            if layer == "digital":
                lay = LocalDigitalLayer(shape, spec, layout=layout, lr=cfg.lr, optimizer=cfg.optimizer,
                                        betas=cfg.betas, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                        generator=gen, counters=self.counters)
            else:
                window = spec.field * spec.field * shape[2]
                lay = LocalAnalogLayer(shape, spec, layout=layout, device=device, update=cfg.analog_update,
                                       bias=cfg.analog_bias, momentum=cfg.momentum, betas=cfg.betas,
                                       seed=cfg.seed * 1_000_000 + i * 1000, engine=cfg.engine,
                                       init_range=cfg.analog_init_range, reads=cfg.analog_reads,
                                       input_gain=math.sqrt(window) if i > 0 else 1.0,
                                       crossbar_factory=factory, counters=self.counters)
            out.append(lay)
            shape, layout = lay.out_shape, "hwc"
        return out

    @property
    def head_from(self) -> int:
        return self._head_from

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    # -- the pieces of a pass -------------------------------------------------------------------
    def normalize(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Length normalisation (FFNet's), the same after every layer ``i``: h / (rms(h) + eps), so
        only the pattern reaches the next layer."""
        self.counters += cost.length_norm(h.shape[0], h.shape[1])
        return h / (h.pow(2).mean(1, keepdim=True).sqrt() + self.config.eps)

    @torch.no_grad()
    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised activities of every layer for images x: what a linear probe of each layer
        reads (analogff.probes)."""
        return [self.normalize(i, h) for i, h in enumerate(self.activities(x))]

    @torch.no_grad()
    def head_input(self, hs: list[torch.Tensor]) -> torch.Tensor:
        """The head's input: normalised activities of layers >= head_from, concatenated (detached)."""
        return torch.cat([self.normalize(i, h) for i, h in enumerate(hs) if i >= self.head_from], 1).detach()

    @torch.no_grad()
    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ValueError("this net has no softmax head (FFConfig.head=False)")
        return self.head(self.head_input(self.activities(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes) logits of the softmax head."""
        return self.head_logits(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, method: str = "softmax") -> torch.Tensor:
        if method != "softmax":
            raise ValueError(f"method={method!r}: an unsupervised net is read by its softmax head; use 'softmax'")
        return self.head_logits(x).argmax(1)

    # -- one training step ----------------------------------------------------------------------
    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                   lr: float | None = None, head_lr: float | None = None, epoch: int | None = None) -> dict:
        """One step: hybrids of the batch, every layer updated by FF on [x; hybrids] (no labels),
        then the head on the detached normalised positive activities (the only use of y).

        Returns {"loss": sum of layer losses, "layer_losses": [...], "head_loss": float (nan
        without a head)}. Raises FloatingPointError on a non-finite loss or activity.
        """
        cfg = self.config
        lr = cfg.lr if lr is None else lr
        head_lr = cfg.head_lr if head_lr is None else head_lr
        b = x.shape[0]
        neg = hybrid_negatives(x, generator, self.image_side, self.blurs)
        self.counters += hybrid_counts(b, self.image_side, self.image_channels, self.blurs)
        inp = torch.cat([x, neg])
        losses, head_parts = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = self._relu(layer(inp))
            loss, d = ff_loss_and_error(h[:b], h[b:], cfg)
            self.counters += cost.ff_layer_loss(b, h.shape[1])
            _check_finite(loss, f"layer {i}", epoch, lr)
            if i < last:
                next_inp = self.normalize(i, h)  # positive rows are also the head's input of this layer
                if i >= self.head_from:
                    head_parts.append(next_inp[:b])
            elif i >= self.head_from:
                head_parts.append(self.normalize(i, h[:b]))  # last layer: only the head reads it
            layer.apply_update(inp, d, lr)
            losses.append(float(loss))
            if i < last:
                inp = next_inp
        out = {"layer_losses": losses, "loss": sum(losses), "head_loss": float("nan")}
        if self.head is not None:
            out["head_loss"] = self._train_head(torch.cat(head_parts, 1).detach(), y, head_lr, epoch)
        return out

    def _train_head(self, hin: torch.Tensor, y: torch.Tensor, head_lr: float, epoch: int | None) -> float:
        """One Adam step of the softmax head on (detached) inputs hin; its error stays in the head."""
        k, b = self.config.num_classes, hin.shape[0]
        logits = self.head(hin)
        _check_finite(logits, "the softmax head", epoch, head_lr)
        probs = torch.softmax(logits, 1)
        d_head = (probs - F.one_hot(y, k).to(probs.dtype)) / b  # cross-entropy's dL/dlogits
        self.counters += cost.head_loss(b, k)
        self.head.apply_update(hin, d_head, head_lr)
        return float(F.cross_entropy(logits, y))
