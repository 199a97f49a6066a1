"""Backprop references: a digital MLP trained with backprop, with operation and memory counting.

:class:`BPNet` is the digital baseline: an MLP (ReLU hidden layers, linear output, softmax
cross-entropy) trained by :func:`train_bp` with Adam or SGD, deterministic under a seed. While it
trains it counts, into ``net.counters`` (an :class:`~analogff.energy.OpCounts`), the operations a
digital accelerator would perform; evaluation passes are counted separately into
``net.eval_counters``; :meth:`BPNet.inference_counts` gives the counts of inference on n samples
without running anything. :meth:`BPNet.peak_memory` reports the bytes of activations and optimiser
state. Feed the counts to :class:`analogff.energy.EnergyModel`.

Counting rules (per mini-batch of B samples; layer l maps ``n_in`` -> ``n_out``; all digital values
are ``accounting.BYTES_PER_VALUE`` = 4 bytes, fp32, matching the energy model's default
``digital_precision``; the rules are :func:`analogff.accounting.bp_step_counts`):

* ``digital_macs``
    - forward: ``B n_in n_out`` per layer;
    - backward: weight gradient ``B n_in n_out`` per layer, and input gradient ``B n_in n_out`` per
      layer except the first (the network input needs no gradient; PyTorch skips it too). So one
      training step costs ``3x`` the forward MACs minus the first layer's input gradient.
* ``digital_ops`` (element-wise)
    - forward: bias add ``B n_out`` per layer, ReLU ``B n_out`` per hidden layer; softmax
      cross-entropy ``SOFTMAX_CE_OPS_PER_CLASS x B x classes`` (max, subtract, exp, sum, log/divide;
      the exp and the log are ``digital_special_ops``, the rest ``digital_ops``);
    - backward: loss gradient (softmax - one-hot) ``B x classes``, ReLU mask ``B n_out`` per hidden
      layer, bias gradient ``B n_out`` per layer;
    - optimiser step: adds, multiplies and special ops per parameter (:data:`analogff.accounting.OPTIMIZERS`).
* memory traffic: the "resident state" (weights + gradients + optimiser state) lives in on-chip SRAM
  if it fits in ``sram_capacity_bytes`` (default 1 MiB), otherwise in DRAM (and is streamed from there
  every mini-batch); activations are held in SRAM. Per mini-batch:
    - weights (incl. biases): read once in the forward pass, read again by the backward pass for every
      layer that needs an input gradient, read and written once by the optimiser step;
    - gradients: written once by the backward pass, read once by the optimiser step;
    - optimiser state (Adam: 2 values per parameter, SGD with momentum: 1, plain SGD: 0): read and
      written once per step;
    - activations stored for the backward pass: the input of every layer (``B n_in``, the weight
      gradient needs it) and the pre-activation of every hidden layer (``B n_out``, for the ReLU mask)
      and the output probabilities (``B x classes``): each written in the forward pass and read back in
      the backward pass. The backward pass's own error vectors are written and read once per layer.
    - the input data pipeline (reading the data set) is common to every method and is not counted.
* inference (``inference_counts``, ``eval_counters``): forward MACs and ops as above plus an argmax
  (``classes`` compares per sample); weights read once per mini-batch (SRAM if they fit, else DRAM);
  every layer's output written and read back once (SRAM).

:class:`AnalogBPNet` is the third point: the same MLP on analog crossbars trained the standard
aihwkit way (forward MVM, transposed backward MVM through DAC and ADC, pulsed update), so the
counters show what Forward-Forward's missing backward pass saves.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from analogff import accounting as cost
from analogff.accounting import BYTES_PER_VALUE, DEFAULT_SRAM_CAPACITY_BYTES, SOFTMAX_CE_OPS_PER_CLASS
from analogff.energy import OpCounts

__all__ = ["BPNet", "train_bp", "evaluate", "AnalogBPNet", "train_analog_bp", "evaluate_analog",
           "SOFTMAX_CE_OPS_PER_CLASS", "DEFAULT_SRAM_CAPACITY_BYTES"]


class BPNet(nn.Module):
    """MLP with ReLU hidden layers and a linear output (softmax in the loss), e.g. [784, 500, 500, 10].

    Weights are initialised like ``torch.nn.Linear`` (uniform, bound 1/sqrt(fan_in)) from a
    ``torch.Generator`` seeded with ``seed``, so construction does not touch the global RNG.
    """

    def __init__(self, dims: Sequence[int], seed: int = 0, optimizer: str = "adam", momentum: float = 0.9,
                 sram_capacity_bytes: int = DEFAULT_SRAM_CAPACITY_BYTES):
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"dims must list at least 2 positive layer widths, got {dims!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if sram_capacity_bytes < 0:
            raise ValueError("sram_capacity_bytes must be >= 0")
        self.dims = dims
        self.seed = int(seed)
        self.optimizer_name = optimizer
        self.momentum = float(momentum) if optimizer == "sgd" else 0.0
        self.bytes_per_value = BYTES_PER_VALUE  # fp32 (analogff.accounting)
        self.sram_capacity_bytes = int(sram_capacity_bytes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for layer in self.layers:
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=g)
                layer.bias.uniform_(-bound, bound, generator=g)
        self.counters = OpCounts()  #: training operations since creation (or last reset)
        self.eval_counters = OpCounts()  #: evaluation (inference) operations since creation

    # -- model --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes)."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=lr)
        return torch.optim.SGD(self.parameters(), lr=lr, momentum=self.momentum)

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def shapes(self) -> list[tuple[int, int]]:
        return list(zip(self.dims[:-1], self.dims[1:]))

    @property
    def n_params(self) -> int:
        return sum(i * o + o for i, o in self.shapes)

    @property
    def _opt_key(self) -> str:
        return "sgd_momentum" if self.optimizer_name == "sgd" and self.momentum else self.optimizer_name

    def forward_macs(self, batch: int = 1) -> int:
        """Forward MACs of ``batch`` samples: ``batch * sum(n_in n_out)``."""
        return batch * sum(i * o for i, o in self.shapes)

    def backward_macs(self, batch: int = 1) -> int:
        """Backward MACs: weight gradients of every layer + input gradients of all but the first."""
        return batch * (sum(i * o for i, o in self.shapes) + sum(i * o for i, o in self.shapes[1:]))

    def peak_memory(self, batch_size: int) -> dict[str, Any]:
        """Peak bytes held during a training step of ``batch_size`` samples (see module doc)."""
        bpv = self.bytes_per_value
        p = self.n_params
        weights = p * bpv
        grads = p * bpv
        opt_state = cost.optimizer(self._opt_key).state_per_param * p * bpv
        stored = sum(i for i, _ in self.shapes) + sum(o for _, o in self.shapes[:-1]) + self.dims[-1]
        activations = batch_size * stored * bpv
        resident = weights + grads + opt_state
        return {
            "weights_bytes": weights, "gradients_bytes": grads, "optimizer_state_bytes": opt_state,
            "activations_bytes": activations, "total_bytes": resident + activations,
            "sram_capacity_bytes": self.sram_capacity_bytes,
            "state_in_sram": not cost.state_in_dram(resident, self.sram_capacity_bytes),
            "inference_weights_in_sram": weights <= self.sram_capacity_bytes,
        }

    # -- counting -------------------------------------------------------------------------------
    def train_step_counts(self, batch: int) -> OpCounts:
        """Counts of one training step (forward, backward, optimiser) on ``batch`` samples
        (:func:`analogff.accounting.bp_step_counts`, the rules of the module doc)."""
        return cost.bp_step_counts(self.dims, batch, self._opt_key, self.sram_capacity_bytes)

    def inference_batch_counts(self, batch: int) -> OpCounts:
        """Counts of one inference mini-batch of ``batch`` samples."""
        bpv, shapes, classes = self.bytes_per_value, self.shapes, self.dims[-1]
        hidden_outs = sum(o for _, o in shapes[:-1])
        all_outs = sum(o for _, o in shapes)
        ops = batch * (all_outs + hidden_outs + classes)  # bias, ReLU, argmax
        w_bytes = self.n_params * bpv
        act_bytes = batch * 2 * all_outs * bpv  # each layer output written and read back
        return OpCounts(digital_macs=self.forward_macs(batch), digital_ops=ops, sram_bytes=act_bytes) \
            + cost.resident_state(w_bytes, cost.state_in_dram(w_bytes, self.sram_capacity_bytes))

    def inference_counts(self, n_samples: int, batch_size: int | None = None) -> OpCounts:
        """Counts of inference on ``n_samples`` in mini-batches of ``batch_size`` (default: one batch)."""
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        bs = n_samples if batch_size is None else int(batch_size)
        total = OpCounts()
        if n_samples == 0:
            return total
        full, rest = divmod(n_samples, bs)
        if full:
            total += self.inference_batch_counts(bs).scaled(full)  # int factor: counts stay ints
        if rest:
            total += self.inference_batch_counts(rest)
        return total

    def training_counts(self, n_samples: int, batch_size: int) -> OpCounts:
        """Counts of one epoch of training on ``n_samples`` in mini-batches of ``batch_size``."""
        full, rest = divmod(int(n_samples), int(batch_size))
        total = self.train_step_counts(batch_size).scaled(full) if full else OpCounts()
        if rest:
            total += self.train_step_counts(rest)
        return total


def _as_tensors(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    if xt.ndim != 2 or yt.ndim != 1 or len(xt) != len(yt):
        raise ValueError(f"expected x (N, features) and y (N,), got {tuple(xt.shape)} and {tuple(yt.shape)}")
    return xt, yt


@torch.no_grad()
def evaluate(net: BPNet, x: Any, y: Any, batch_size: int = 1000, count: bool = True) -> dict[str, float]:
    """Loss and accuracy of ``net`` on (x, y); counts into ``net.eval_counters`` if ``count``."""
    xt, yt = _as_tensors(x, y)
    if len(xt) == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    was_training = net.training
    net.eval()
    loss_sum, correct = 0.0, 0
    for s in range(0, len(xt), batch_size):
        xb, yb = xt[s:s + batch_size], yt[s:s + batch_size]
        logits = net(xb)
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
        if count:
            net.eval_counters += net.inference_batch_counts(len(xb))
    net.train(was_training)
    return {"loss": loss_sum / len(xt), "acc": correct / len(xt)}


def train_bp(net: BPNet, x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None, epochs: int = 1,
             batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
             on_epoch: Callable[[dict[str, Any]], Any] | None = None) -> list[dict[str, Any]]:
    """Train ``net`` with backprop (cross-entropy, ``net``'s optimiser) and return per-epoch metrics.

    Each epoch's dict has ``epoch`` (1-based), ``train_loss`` (mean mini-batch loss over the epoch),
    ``train_acc`` (on the mini-batches as seen), ``test_loss`` and ``test_acc`` (None without a test
    set), ``samples_seen``, and ``ops`` / ``eval_ops``: snapshots of ``net.counters`` /
    ``net.eval_counters`` as dicts (cumulative). ``on_epoch(metrics)`` is called after each epoch.
    Shuffling uses a ``torch.Generator`` seeded with ``seed``: the same net seed, data and arguments
    give identical numbers.
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    xt, yt = _as_tensors(x_train, y_train)
    has_test = x_test is not None and y_test is not None
    opt = net.make_optimizer(lr)
    g = torch.Generator().manual_seed(int(seed))
    history: list[dict[str, Any]] = []
    seen = 0
    net.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(xt), generator=g)
        loss_sum, correct, n_batches = 0.0, 0, 0
        for s in range(0, len(xt), batch_size):
            idx = perm[s:s + batch_size]
            xb, yb = xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):  # before the step: the net keeps its last good weights
                raise FloatingPointError(f"digital BP loss is {loss_value} in epoch {epoch} (mini-batch {n_batches + 1}); "
                                         f"the net keeps the weights of the last good step; lower the learning rate (lr={lr:g})")
            loss.backward()
            opt.step()
            net.counters += net.train_step_counts(len(idx))
            loss_sum += loss_value
            correct += int((logits.detach().argmax(1) == yb).sum())
            n_batches += 1
            seen += len(idx)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(n_batches, 1),
            "train_acc": correct / max(len(xt), 1),
            "test_loss": None, "test_acc": None,
            "samples_seen": seen,
        }
        metrics["eval_samples"] = 0
        if has_test:
            ev = evaluate(net, x_test, y_test)  # counts into net.eval_counters, never as training
            metrics["test_loss"], metrics["test_acc"] = ev["loss"], ev["acc"]
            metrics["eval_samples"] = len(x_test)
        metrics["ops"] = net.counters.as_dict()
        metrics["eval_ops"] = net.eval_counters.as_dict()
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history


# ---------------------------------------------------------------------------------------------
# Analog backprop: the same MLP trained on crossbars the standard aihwkit way.
# ---------------------------------------------------------------------------------------------


class AnalogBPNet(nn.Module):
    """The BPNet architecture on analog crossbars, trained by backprop as aihwkit's ``AnalogLinear`` does.

    Per layer and mini-batch: a forward MVM (DAC, array, ADC), a transposed backward MVM of the error
    (again through DAC and ADC: this is what Forward-Forward saves), and a pulsed rank-one update
    ``W <- W - lr * delta^T h`` on the array. Biases, ReLU, softmax and the error are digital
    periphery work (counted like :class:`BPNet`'s element-wise ops, fp32). ``counters`` adds up the
    crossbars' analog counts and the periphery's digital counts.
    """

    def __init__(self, dims: Sequence[int], device: Any, seed: int = 0, engine: str = "torch"):
        super().__init__()
        from analogff.crossbar import Crossbar

        if len(dims) < 2:
            raise ValueError(f"dims needs at least an input and an output size, got {list(dims)}")
        self.dims = [int(d) for d in dims]
        self.layers = nn.ModuleList(
            Crossbar(i, o, device=device, seed=seed + 101 * k, engine=engine)
            for k, (i, o) in enumerate(zip(self.dims[:-1], self.dims[1:]))
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(o), requires_grad=False) for o in self.dims[1:])
        self.periphery = OpCounts()
        self.eval_counters = OpCounts()  #: evaluation during training (not in ``counters``)
        self.bytes_per_value = BYTES_PER_VALUE

    @property
    def counters(self) -> OpCounts:
        """Training counts: the periphery's plus every crossbar's, summed fresh (a new object)."""
        from analogff.energy import total_counts

        return total_counts(self)

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations [x, h1, ..., logits]; counts the periphery's element-wise ops."""
        acts = [x]
        h = x
        for k, (layer, b) in enumerate(zip(self.layers, self.biases)):
            z = layer(h) + b
            h = torch.relu(z) if k < len(self.layers) - 1 else z
            acts.append(h)
        batch = x.shape[0]
        hidden = sum(self.dims[1:-1])
        self.periphery.digital_ops += batch * (sum(self.dims[1:]) + hidden)  # bias adds, ReLUs
        return acts

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._forward(x)[-1]
        self.periphery.digital_ops += x.shape[0] * self.dims[-1]  # argmax
        return logits

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, torch.Tensor]:
        """One backprop step on the arrays; returns (mean loss, logits)."""
        acts = self._forward(x)
        logits = acts[-1]
        batch, classes = x.shape[0], self.dims[-1]
        loss = float(nn.functional.cross_entropy(logits, y))
        delta = (torch.softmax(logits, 1) - nn.functional.one_hot(y, classes).float()) / batch
        for k in range(len(self.layers) - 1, -1, -1):
            layer, h_in = self.layers[k], acts[k]
            d_in = layer.backward(delta) * (acts[k] > 0) if k > 0 else None  # transposed MVM (ADC)
            layer.update(h_in, delta, lr)  # pulsed rank-one update
            self.biases[k] -= lr * delta.sum(0)
            delta = d_in
        bpv = self.bytes_per_value
        hidden = sum(self.dims[1:-1])
        self.periphery.digital_ops += batch * ((SOFTMAX_CE_OPS_PER_CLASS - 2) * classes + classes + hidden
                                               + sum(self.dims[1:]))  # loss, error, ReLU masks, bias grads
        self.periphery.digital_special_ops += batch * 2 * classes  # the loss's exp and log
        stored = sum(self.dims[:-1]) + hidden + classes  # activations kept for the backward pass
        self.periphery.sram_bytes += batch * 2 * stored * bpv
        return loss, logits


@torch.no_grad()
def evaluate_analog(net: AnalogBPNet, x: Any, y: Any, batch_size: int = 1000) -> tuple[dict[str, float], OpCounts]:
    """Accuracy of an analog net; returns (metrics, the inference op counts of this pass).

    Evaluation is not training: the net's counters are left as they were.
    """
    from analogff.energy import measured

    xt, yt = _as_tensors(x, y)
    net.eval()
    correct = 0
    with measured(net) as m:
        for s in range(0, len(xt), batch_size):
            correct += int((net(xt[s:s + batch_size]).argmax(1) == yt[s:s + batch_size]).sum())
    net.train()
    return {"acc": correct / max(len(xt), 1)}, m.counts


def train_analog_bp(net: AnalogBPNet, x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None,
                    epochs: int = 1, batch_size: int = 100, lr: float = 0.05, seed: int = 0,
                    on_epoch: Callable[[dict[str, Any]], Any] | None = None,
                    progress: bool = False) -> list[dict[str, Any]]:
    """Train an :class:`AnalogBPNet` with analog SGD; per-epoch metrics as :func:`train_bp` returns."""
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    xt, yt = _as_tensors(x_train, y_train)
    g = torch.Generator().manual_seed(int(seed))
    history: list[dict[str, Any]] = []
    seen = 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(xt), generator=g)
        loss_sum, correct, n_batches = 0.0, 0, 0
        starts = range(0, len(xt), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"analog_bp epoch {epoch}/{epochs}", leave=False,
                          disable=not sys.stderr.isatty())  # a bar only on a terminal
        for s in starts:
            idx = perm[s:s + batch_size]
            loss, logits = net.train_step(xt[idx], yt[idx], lr)
            if not math.isfinite(loss):
                raise FloatingPointError(f"analog BP loss is {loss} in epoch {epoch}; lower the learning rate (lr={lr})")
            loss_sum += loss
            correct += int((logits.argmax(1) == yt[idx]).sum())
            n_batches += 1
            seen += len(idx)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(n_batches, 1),
                                   "train_acc": correct / max(len(xt), 1), "test_acc": None,
                                   "samples_seen": seen, "eval_samples": 0}
        if x_test is not None and y_test is not None:
            ev, ev_counts = evaluate_analog(net, x_test, y_test)
            net.eval_counters += ev_counts
            metrics["test_acc"], metrics["eval_samples"] = ev["acc"], len(x_test)
        metrics["ops"] = net.counters.as_dict()
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history
