"""Locally connected FF layers: local receptive fields without weight sharing (Hinton 2022, §3.2).

A locally connected layer sits on a grid of locations over its input (an image, or the grid of
the layer below). Location (gy, gx) reads the window of ``field x field`` input grid points whose
top-left corner is (gy * stride, gx * stride), *all* channels of each, and has its own
``channels`` units with their own weights (no sharing between locations, unlike a convolution).
The output is laid out location-major, ``(gy, gx, channel)``, which is the next layer's "hwc" input.

Two kinds, with the FF layer interface of :mod:`analogff.layers` (``forward(x) -> z`` and
``apply_update(x, d, lr)``: W <- W - lr d^T x, per location):

* :class:`LocalDigitalLayer`: one (channels x window) weight block per location, stacked in one
  tensor (L, channels, window) and applied with one batched ``einsum``; a torch optimiser
  (Adam by default) on the stacked blocks is exactly one optimiser per location.
* :class:`LocalAnalogLayer`: one small :class:`analogff.layers.AnalogLayer` (one
  :class:`analogff.crossbar.Crossbar` of (window + bias) rows x channels) per location, so only the
  cells that are used exist, are simulated, counted (MVMs, DAC/ADC conversions, reads, pulses) and
  priced. The periphery routes each location's window to its tile (SRAM traffic counted by the
  AnalogLayer); the tiles are read one after another (a chip would read them in parallel: same
  counts).

The named architecture :data:`LOCAL_ARCHITECTURES` ``["hinton_local"]`` is the paper's (arXiv
2212.13345, §3.2, the paragraph on local receptive fields): first hidden layer a 4 x 4 grid of
locations, stride 6, 10 x 10-pixel receptive fields, 128 channels per location; second a 3 x 3
grid, 220 channels, each location reading all channels of a square of 2 x 2 adjacent grid points
of the layer below (stride 1); third a 2 x 2 grid, 512 channels, again 2 x 2 adjacent grid points
below. The paper reports 1.16 % MNIST test error after 60 epochs with this net (it "has
approximately 2000 hidden units per layer": 2048, 1980, 2048). Input index windows on a 28 x 28
image, pixel index = 28 * row + col:

* layer 1, location (gy, gx): rows 6 gy .. 6 gy + 9, cols 6 gx .. 6 gx + 9 (gy, gx in 0..3; the
  fields overlap by 4 pixels and tile the 28 x 28 image exactly: 3 * 6 + 10 = 28), 100 inputs;
* layer 2, location (gy, gx) in 0..2: layer-1 grid points (gy..gy+1, gx..gx+1) x 128 channels,
  inputs ((py * 4 + px) * 128 + c), 512 inputs;
* layer 3, location (gy, gx) in 0..1: layer-2 grid points (gy..gy+1, gx..gx+1) x 220 channels,
  inputs ((py * 3 + px) * 220 + c), 880 inputs.

Differences from the paper: it used "peer normalization" of the hidden activities (its appendix
A) to keep units from being always on or off, not implemented here; the length normalisation
between layers is over the whole layer (all locations together), which the paper does not spell out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from analogff import accounting as cost
from analogff.energy import OpCounts
from analogff.layers import AnalogLayer, DigitalOptimState, digital_optimizer

__all__ = ["LocalSpec", "LOCAL_ARCHITECTURES", "local_windows", "LocalDigitalLayer", "LocalAnalogLayer",
           "architecture_shapes"]


@dataclass(frozen=True)
class LocalSpec:
    """One locally connected layer: ``grid x grid`` locations, each reading ``field x field``
    input grid points (all their channels) from (g * stride), with ``channels`` units."""

    grid: int  #: locations per side
    field: int  #: receptive field side, in input grid points (pixels for the first layer)
    stride: int  #: step between neighbouring locations' fields, in input grid points
    channels: int  #: units per location


#: named architectures: the paper's local receptive field net (module docstring)
LOCAL_ARCHITECTURES: dict[str, tuple[LocalSpec, ...]] = {
    "hinton_local": (LocalSpec(grid=4, field=10, stride=6, channels=128),
                     LocalSpec(grid=3, field=2, stride=1, channels=220),
                     LocalSpec(grid=2, field=2, stride=1, channels=512)),
}


def local_windows(in_shape: tuple[int, int, int], spec: LocalSpec, layout: str = "hwc") -> torch.Tensor:
    """Input indices of every location's window, (grid^2, field^2 * channels_in) int64, locations
    row-major. ``in_shape`` = (height, width, channels) of the input grid; ``layout`` how the flat
    input is ordered: "hwc" (index = (y * width + x) * channels + c: pixels of MNIST, the grid of a
    layer below) or "chw" (index = (c * height + y) * width + x: CIFAR-10's planes). Raises
    ValueError if the fields do not fit the input."""
    h, w, c = in_shape
    reach = (spec.grid - 1) * spec.stride + spec.field
    if min(spec.grid, spec.field, spec.stride, spec.channels) < 1:
        raise ValueError(f"{spec}: grid, field, stride and channels must be >= 1")
    if reach > h or reach > w:
        raise ValueError(f"{spec} reaches {reach} grid points but the input is {h} x {w}; use a smaller "
                         "grid, field or stride")
    if layout not in ("hwc", "chw"):
        raise ValueError(f"layout={layout!r}; choose 'hwc' or 'chw'")
    flat = torch.arange(h * w * c)
    grid = flat.view(h, w, c) if layout == "hwc" else flat.view(c, h, w).permute(1, 2, 0)  # (h, w, c)
    out = []
    for gy in range(spec.grid):
        for gx in range(spec.grid):
            y0, x0 = gy * spec.stride, gx * spec.stride
            win = grid[y0:y0 + spec.field, x0:x0 + spec.field, :]  # (field, field, c)
            out.append(win.reshape(-1) if layout == "hwc" else win.permute(2, 0, 1).reshape(-1))
    return torch.stack(out)


def architecture_shapes(specs, in_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """(height, width, channels) of the input and of every layer's output grid."""
    shapes = [tuple(in_shape)]
    for s in specs:
        shapes.append((s.grid, s.grid, s.channels))
    return shapes


class _LocalGeometry(nn.Module):
    """Windows, sizes and the gather shared by the digital and analog local layers."""

    def _setup(self, in_shape, spec: LocalSpec, layout: str) -> None:
        self.spec, self.in_shape, self.layout = spec, tuple(in_shape), layout
        self.register_buffer("windows", local_windows(self.in_shape, spec, layout), persistent=False)
        self.n_locations, self.window = self.windows.shape
        self.n_in = int(math.prod(self.in_shape))
        self.n_out = self.n_locations * spec.channels
        self.out_shape = (spec.grid, spec.grid, spec.channels)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_in) -> (B, L, window): every location's inputs."""
        if x.shape[1] != self.n_in:
            raise ValueError(f"local layer expects {self.n_in} inputs {self.in_shape}, got {x.shape[1]}")
        return x[:, self.windows]


class LocalDigitalLayer(DigitalOptimState, _LocalGeometry):
    """A digital locally connected FF layer: weights (L, channels, window), biases (L, channels)."""

    #: set by the net: True when its resident state exceeds the on-chip SRAM
    state_in_dram: bool = False

    def __init__(self, in_shape: tuple[int, int, int], spec: LocalSpec, *, layout: str = "hwc",
                 lr: float = 1e-3, optimizer: str = "adam", betas=(0.9, 0.999), momentum: float = 0.9,
                 weight_decay: float = 0.0, bias: bool = True, generator: torch.Generator | None = None,
                 counters: OpCounts | None = None):
        super().__init__()
        self._setup(in_shape, spec, layout)
        bound = 1.0 / math.sqrt(self.window)  # nn.Linear's default init per location, from our generator
        w = torch.empty(self.n_locations, spec.channels, self.window).uniform_(-bound, bound, generator=generator)
        self.weight = nn.Parameter(w)
        b0 = torch.empty(self.n_locations, spec.channels).uniform_(-bound, bound, generator=generator)
        self.bias = nn.Parameter(b0) if bias else None
        params = [p for p in (self.weight, self.bias) if p is not None]
        self.optimizer_name = optimizer
        self.opt = digital_optimizer(params, optimizer, lr, betas, momentum, weight_decay)
        self.counters = counters if counters is not None else OpCounts()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in (self.weight, self.bias) if p is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_in) -> (B, L * channels) pre-activations, location-major."""
        b, ch = x.shape[0], self.spec.channels
        xs = self.gather(x)
        z = torch.einsum("blf,lof->blo", xs, self.weight)
        if self.bias is not None:
            z = z + self.bias
        self.counters += cost.linear_forward(b, self.window, ch, self.bias is not None,
                                             self.state_in_dram).scaled(self.n_locations)
        return z.reshape(b, self.n_out)

    def apply_update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """Each location's block <- optimiser step with gradient d_l^T x_l (bias: sum_b d_l)."""
        b, ch = x.shape[0], self.spec.channels
        xs, ds = self.gather(x), d.reshape(b, self.n_locations, ch)
        self.weight.grad = torch.einsum("blo,blf->lof", ds, xs)
        if self.bias is not None:
            self.bias.grad = ds.sum(0)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.weight.grad = None
        if self.bias is not None:
            self.bias.grad = None
        self.counters += cost.digital_update(b, self.window, ch, self.optimizer_name, self.bias is not None,
                                             self.state_in_dram).scaled(self.n_locations)


class LocalAnalogLayer(_LocalGeometry):
    """An analog locally connected FF layer: one :class:`AnalogLayer` (its own small crossbar of
    window + bias rows x channels columns) per location, in ``self.tiles``.

    ``crossbar_factory(n_rows, n_cols, seed)`` builds the tiles instead of ``Crossbar`` (tests pass a
    digital fake); ``seed`` + location index seeds each tile. The other keywords are AnalogLayer's.
    """

    def __init__(self, in_shape: tuple[int, int, int], spec: LocalSpec, *, layout: str = "hwc", device=None,
                 update: str = "auto", bias: bool = True, momentum: float = 0.9, betas=(0.9, 0.999),
                 seed: int = 0, engine: str = "torch", init_range: float | None = None, input_gain: float = 1.0,
                 crossbar_factory: Callable | None = None, counters: OpCounts | None = None, reads: int = 1):
        super().__init__()
        self._setup(in_shape, spec, layout)
        self.counters = counters if counters is not None else OpCounts()
        self.bias = bias
        self.tiles = nn.ModuleList([
            AnalogLayer(self.window, spec.channels, device=device, update=update, bias=bias, momentum=momentum,
                        betas=betas, seed=seed + l, engine=engine, counters=self.counters, input_gain=input_gain,
                        init_range=init_range, reads=reads,
                        crossbar=None if crossbar_factory is None else
                        crossbar_factory(self.window + int(bias), spec.channels, seed + l))
            for l in range(self.n_locations)])
        self.update = self.tiles[0].update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_in) -> (B, L * channels): every location's tile reads its window."""
        xs = self.gather(x)
        return torch.cat([tile(xs[:, l]) for l, tile in enumerate(self.tiles)], 1)

    def apply_update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """Each tile takes its own local update d_l^T x_l by its AnalogLayer's rule."""
        xs, ch = self.gather(x), self.spec.channels
        for l, tile in enumerate(self.tiles):
            tile.apply_update(xs[:, l], d[:, l * ch:(l + 1) * ch], lr)

    @property
    def state_in_dram(self) -> bool:
        return self.__dict__.get("_state_in_dram", False)

    @state_in_dram.setter
    def state_in_dram(self, value: bool) -> None:
        self.__dict__["_state_in_dram"] = bool(value)
        for tile in self.tiles:
            tile.state_in_dram = bool(value)

    @property
    def n_cells(self) -> int:
        """Weights on the tiles (bias rows included): sum over locations of rows x cols."""
        return self.n_locations * (self.window + int(self.bias)) * self.spec.channels

    @property
    def periphery_state_bytes(self) -> int:
        return sum(t.periphery_state_bytes for t in self.tiles)

    @property
    def resident_bytes(self) -> int:
        return self.periphery_state_bytes

    def optim_state(self) -> dict:
        return {}  # the tiles' periphery state lives in buffers (state_dict)

    def load_optim_state(self, state: dict) -> None:
        pass
