"""Hybrid schedules on one digital network: Forward-Forward then backprop, or backprop then FF.

A course study that compared FF with backprop (the project's sources, summarised in
docs/networks.md) tried using one algorithm's trained weights to initialise the other and reported
that both orders collapsed below 10 % test accuracy. The main job reruns it as two methods:

* ``ff_then_bp``: an :class:`~analogff.ff.FFNet` (digital, the run's ``--ff.*`` settings) trains for
  the first ``hybrid_split`` of the epochs; its layers' weights and biases become the hidden layers of
  a :class:`~analogff.reference.BPNet` of the same widths (the output layer keeps its own
  initialisation), which backprop trains for the remaining epochs. Accuracy: BP's.
* ``bp_then_ff``: the same in the other order; BP's output layer is dropped, the FF net's head starts
  fresh. Accuracy: the FF net's readout (``--predict``).

What is copied is exactly the weight matrices: FF's length normalisation between layers and its
label pixels are not part of BP's network, and BP's output layer is not part of FF's. The accuracy
of the copied weights in the second algorithm *before* it trains (``accuracy_at_switch``) shows how
much of the first phase survives the move.

Energy: both phases are real training and are counted in their own nets (the FF net's and BP's
counters, the rules of :mod:`analogff.accounting`); :class:`HybridNet` holds both, so the main job's
``total_counts`` adds them up. The switch evaluation is evaluation and is counted as such.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from .counts import OpCounts, evaluation, measured

HYBRID_METHODS = ("ff_then_bp", "bp_then_ff")


def _pairs(ff: nn.Module, bp: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """(FF layer's Linear, BP hidden layer) of every hidden layer; refuses nets of other shapes."""
    ff_lin = [getattr(layer, "linear", None) for layer in ff.layers]
    if any(lin is None for lin in ff_lin):
        raise ValueError("hybrid schedules need a digital FFNet (dense DigitalLayers)")
    hidden = list(bp.layers)[:-1]
    shapes_ff = [tuple(lin.weight.shape) for lin in ff_lin]
    shapes_bp = [tuple(lin.weight.shape) for lin in hidden]
    if shapes_ff != shapes_bp or any(lin.bias is None for lin in ff_lin):
        raise ValueError(f"FF layers {shapes_ff} and BP hidden layers {shapes_bp} must match, with biases")
    return list(zip(ff_lin, hidden))


@torch.no_grad()
def copy_ff_to_bp(ff: nn.Module, bp: nn.Module) -> None:
    """BP's hidden layers take the FF layers' weights and biases; BP's output layer is left as it is."""
    for src, dst in _pairs(ff, bp):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


@torch.no_grad()
def copy_bp_to_ff(bp: nn.Module, ff: nn.Module) -> None:
    """The FF layers take BP's hidden weights and biases (BP's output layer is dropped); the FF
    layers' optimiser state is reset, as for any new initialisation."""
    for dst, src in _pairs(ff, bp):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    for layer in ff.layers:
        layer.opt.state.clear()


class HybridNet(nn.Module):
    """The two nets of a hybrid run, in training order. Their training counters add up (the main
    job's ``total_counts`` walks both); ``eval_counters`` is the sum of their evaluation counters."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first, self.second = first, second

    @property
    def eval_counters(self) -> OpCounts:
        return self.first.eval_counters + self.second.eval_counters

    @property
    def resident_bytes(self) -> int:
        """Bytes held between steps in training: the larger phase's (one net trains at a time)."""
        from .experiment import _resident_state

        return max(_resident_state(n, 1)["training"] for n in (self.first, self.second))

    @property
    def inference_resident_bytes(self) -> int:
        from .experiment import _resident_state

        return _resident_state(self.second, 1)["inference"]


def phase_epochs(epochs: int, split: float) -> tuple[int, int]:
    """Epochs of the first and second phase: ``round(split * epochs)``, at least one each."""
    first = min(max(1, round(split * epochs)), epochs - 1)
    return first, epochs - first


def train_hybrid(name: str, ff: nn.Module, bp: nn.Module, data: dict, *, epochs: int, split: float = 0.5,
                 ff_config: Any = None, batch_size: int = 100, bp_lr: float = 1e-3, seed: int = 0,
                 predict: str = "goodness", on_epoch: Callable[[dict], None] | None = None
                 ) -> tuple[HybridNet, dict[str, Any]]:
    """Run the hybrid method ``name`` (``ff_then_bp`` | ``bp_then_ff``): ``ff`` (a digital FFNet,
    trained with ``ff_config``, its own config by default) and ``bp`` (a BPNet of the same hidden
    widths) for ``epochs`` in all, the first ``split`` of them in the first algorithm.

    Returns the two nets and the method's entry fields: ``test_accuracy``, ``accuracy_at_switch``,
    ``phases``, ``inference_counts`` and ``history`` (each epoch tagged with its ``phase``, numbered
    through both phases)."""
    from .reference import evaluate, train_bp
    from .train import train_ff

    if name not in HYBRID_METHODS:
        raise ValueError(f"hybrid method {name!r}: one of {', '.join(HYBRID_METHODS)}")
    if epochs < 2:
        raise ValueError(f"a hybrid schedule needs >= 2 epochs (one per phase), got {epochs}")
    _pairs(ff, bp)  # the shapes match before anything trains
    (x, y), (x_test, y_test) = data["train"], data["test"]
    ffcfg = ff_config if ff_config is not None else ff.config
    k1, k2 = phase_epochs(epochs, split)
    history: list[dict[str, Any]] = []

    t_start = time.perf_counter()

    def tagged(phase: str, offset: int) -> Callable[[dict], None]:
        def hook(m: dict) -> None:
            m["phase"] = phase
            m["epoch"] += offset
            m["wall_time_s"] = time.perf_counter() - t_start  # through both phases
            history.append(m)
            if on_epoch is not None:
                on_epoch(m)
        return hook

    def run_ff(epochs: int, offset: int) -> None:
        train_ff(ff, data, ffcfg, epochs=epochs, batch_size=batch_size, seed=seed + offset,
                 on_epoch=tagged("digital_ff", offset), progress=True)

    def run_bp(epochs: int, offset: int) -> None:
        train_bp(bp, x, y, x_test, y_test, epochs=epochs, batch_size=batch_size, lr=bp_lr,
                 seed=seed + offset, on_epoch=tagged("digital_bp", offset))

    if name == "ff_then_bp":
        run_ff(k1, 0)
        at_end_of_first = history[-1]
        copy_ff_to_bp(ff, bp)
        at_switch = evaluate(bp, x_test, y_test)["acc"]
        at_end_of_first["eval_samples"] = (at_end_of_first.get("eval_samples") or 0) + len(x_test)
        run_bp(k2, k1)
        acc = evaluate(bp, x_test, y_test, count=False)["acc"]
        inf_counts = bp.inference_counts(len(x_test), batch_size=1000)  # what that evaluate() ran
        nets = HybridNet(ff, bp)
    else:
        run_bp(k1, 0)
        at_end_of_first = history[-1]
        copy_bp_to_ff(bp, ff)
        with evaluation(ff, ff.eval_counters):  # evaluation, counted as such
            at_switch = ff.accuracy(x_test, y_test, predict)
        at_end_of_first["eval_samples"] = (at_end_of_first.get("eval_samples") or 0) + len(x_test)
        run_ff(k2, k1)
        with measured(ff) as inf:
            acc = ff.accuracy(x_test, y_test, predict)
        inf_counts = inf.counts
        nets = HybridNet(bp, ff)
    first = "digital_ff" if name == "ff_then_bp" else "digital_bp"
    second = "digital_bp" if name == "ff_then_bp" else "digital_ff"
    extra = {
        "test_accuracy": acc,
        "predict": predict if name == "bp_then_ff" else "logits",
        "hybrid_split": split,
        "phases": [
            {"method": first, "epochs": k1, "test_accuracy_at_end": _acc(at_end_of_first)},
            {"method": second, "epochs": k2, "accuracy_at_switch": at_switch, "test_accuracy_at_end": acc},
        ],
        "accuracy_at_switch": at_switch,
        "inference_counts": inf_counts,
        "history": history,
        "drift": {},
    }
    return nets, extra


def _acc(h: dict[str, Any]) -> float | None:
    for k in ("test_acc", "test_acc_goodness", "test_acc_softmax"):
        if h.get(k) is not None:
            return float(h[k])
    return None
