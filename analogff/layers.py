"""The layers an FF net is built of, and the update rules of an analog layer's periphery.

``DigitalLayer`` is ``nn.Linear`` with a torch optimiser; ``AnalogLayer`` is an
:class:`analogff.crossbar.Crossbar` with an update rule in the digital periphery (or, for a
transfer-compound profile, the array's own on-array learning). Both expose ``forward(x) -> z`` and
``apply_update(x, d, lr)``: W <- W - lr * d^T x, local to the layer. :mod:`analogff.ff` stacks them.

Counts: each layer adds its digital work to ``self.counters`` with the primitive costs of
:mod:`analogff.accounting`; an analog layer's crossbar counts its analog operations itself.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from analogff import accounting as cost
from analogff.energy import OpCounts



def adam_direction(m: torch.Tensor, v: torch.Tensor, t: int, g: torch.Tensor,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """Adam's step direction for gradient g at step t (1-based), updating m and v in place:
    W <- W - lr * the result (torch.optim.Adam's rule, for the analog periphery)."""
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    return (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)


class DigitalOptimState:
    """The optimiser state of a digital layer with a torch optimiser ``self.opt``, its size and the
    residency rule's input (``optimizer_name``, ``n_params``): shared by the dense and the locally
    connected digital layers."""

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


def digital_optimizer(params, name: str, lr: float, betas=(0.9, 0.999), momentum: float = 0.9,
                      weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The torch optimiser of a digital layer: "adam" | "momentum" (SGD with momentum) | "sgd"."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


class LayerStackState:
    """Counts and optimiser state of a net of ``self.layers`` and an optional softmax ``self.head``
    (FFNet, UnsupervisedFFNet, RecurrentFFNet): the residency of the phase, and the counted ReLU."""

    def train(self, mode: bool = True):
        """nn.Module.train, and the residency of the phase (``resident_bytes`` in training,
        ``inference_resident_bytes`` in inference): every layer's state goes to SRAM or DRAM by the
        one rule (analogff.accounting.state_in_dram)."""
        super().train(mode)
        in_dram = cost.state_in_dram(self.resident_bytes if mode else self.inference_resident_bytes)
        for lay in [*self.layers, *([self.head] if self.head is not None else [])]:
            lay.state_in_dram = in_dram
        return self

    #: the net's readouts, its default first (``predict`` / ``accuracy`` methods; train_ff evaluates these)
    readouts: tuple[str, ...] = ("goodness", "softmax")

    def _relu(self, z: torch.Tensor) -> torch.Tensor:
        self.counters += cost.relu(z.numel())
        return torch.relu(z)

    @torch.no_grad()
    def activities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ReLU activities of every layer for inputs x (labels, if the net has them, already
        overlaid); between layers the net's ``normalize(i, h)``."""
        hs = []
        for i, layer in enumerate(self.layers):
            h = self._relu(layer(x))
            hs.append(h)
            if i + 1 < len(self.layers):
                x = self.normalize(i, h)
        return hs

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, method: str | None = None, batch_size: int = 1000) -> float:
        """Fraction of x that ``predict(x, method)`` classifies as y (default: the net's first readout),
        in evaluation mode and in batches; the mode is restored, also on an error."""
        method = self.readouts[0] if method is None else method
        x, y = torch.as_tensor(x).float(), torch.as_tensor(y)
        was_training = self.training
        self.eval()
        correct = 0
        try:
            for s in range(0, x.shape[0], batch_size):
                xb, yb = x[s:s + batch_size].to(self.device), y[s:s + batch_size].to(self.device)
                correct += int((self.predict(xb, method) == yb).sum())
        finally:
            self.train(was_training)
        return correct / max(1, x.shape[0])

    def total_counts(self) -> OpCounts:
        """Training counts: the periphery/digital counts plus every crossbar's (not ``eval_counters``)."""
        from analogff.counts import total_counts

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


class DigitalLayer(DigitalOptimState, nn.Module):
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
        self.opt = digital_optimizer(list(self.linear.parameters()), optimizer, lr, betas, momentum, weight_decay)
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

    def error_through(self, d: torch.Tensor) -> torch.Tensor:
        """The error at this layer's input, d W (B, n_in), from the error d (B, n_out) at its output
        (pairwise learning: the layer above's loss reaching this one)."""
        self.counters += cost.linear_backward(d.shape[0], self.linear.in_features, self.linear.out_features,
                                              self.state_in_dram)
        return d @ self.linear.weight

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


ANALOG_UPDATES = ("auto", "sgd", "normalized", "momentum", "adam", "onarray")
#: the learning rate each analog rule is used with by default (the main job's ``ff_lr_analog`` when
#: unset): adam/momentum a step in weight units, sgd/normalized the pulsed update's lr, onarray the
#: transfer's gain into H (README, "Update rules")
ANALOG_LR = {"sgd": 0.1, "normalized": 3e-4, "momentum": 0.01, "adam": 1e-3, "onarray": 0.01}


def default_reads(update: str) -> int:
    """Reads per forward MVM when none is asked for: 2 with a periphery rule (momentum, Adam: the
    read noise of training costs the head on Fashion-MNIST, and a second read is ~2 % of the
    training energy), 1 with the array's own update (sgd, normalized, onarray: the ADC is a third to
    a half of the training energy there). docs/networks.md, "Read noise in training"."""
    return 2 if update in ("adam", "momentum") else 1


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

    ``reads``: every forward MVM (:meth:`read`) reads the array this many times and the periphery
    averages the outputs: the read noise falls by sqrt(reads); every read is a counted crossbar read.
    None: :func:`default_reads` of the rule (2 with the periphery's momentum or Adam, else 1).

    ``crossbar``: any object with ``forward(x)``, ``update(x, d, lr)``, ``update_rows(u, lr)``
    (momentum, adam) and ``counters`` (tests
    pass a fake); by default an ``analogff.crossbar.Crossbar`` built from ``device``.
    """

    def __init__(self, n_in: int, n_out: int, *, device=None, update: str = "auto",
                 bias: bool = True, momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8,
                 norm_stat: str = "rms", seed: int = 0, engine: str = "torch", crossbar=None,
                 counters: OpCounts | None = None, input_gain: float = 1.0, init_range: float | None = None,
                 reads: int | None = None):
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
        if reads is not None and (isinstance(reads, bool) or not isinstance(reads, int) or reads < 1):
            raise ValueError(f"reads={reads!r}; choose an integer >= 1")
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
        self.reads = default_reads(update) if reads is None else reads
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
        y = self.read(self._rows(x))
        return y / self.input_gain if self.input_gain != 1.0 else y

    def read(self, values: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The array's output for ``values`` on all its rows, or on ``rows`` only (the others held at 0 V),
        in array units (times the input gain): ``reads`` crossbar reads averaged by the periphery
        (its adds and multiply counted). A crossbar without row selection (a test's fake) is driven
        with zeros on the other rows."""
        if rows is not None and "rows" not in inspect.signature(self.xbar.forward).parameters:
            full = values.new_zeros(values.shape[0], self.n_in + int(self.bias))
            full[:, rows.to(values.device)] = values
            values, rows = full, None  # once per read, not once per repeated read

        def once() -> torch.Tensor:
            return self.xbar.forward(values) if rows is None else self.xbar.forward(values, rows=rows)

        y = once()
        if self.reads > 1:
            for _ in range(self.reads - 1):
                y = y + once()
            n = y.numel()
            self.counters += OpCounts(digital_ops=(self.reads - 1) * n, digital_mults=n)
            y = y / self.reads
        return y

    def error_through(self, d: torch.Tensor) -> torch.Tensor:
        """The error at this layer's input, W^T d (B, n_in), from the error d (B, n_out) at its
        output: a transposed MVM on the array (the error drives the columns, the rows are read
        through the ADC), counted by the crossbar as backward conversions. FF itself never needs
        it; pairwise learning (the layer above's loss reaching this one) does. The input gain
        cancels: the layer computes W x for any gain."""
        self.counters += cost.analog_periphery_io(d.shape[0], self.n_out, self.n_in)  # d in, the error out
        e = self.xbar.backward(d)
        return e[:, :self.n_in] if self.bias else e

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
