"""The FF training loop: mini-batches, seeded RNG, metrics, atomic checkpoints, exact resume.

``train_ff(net, data, cfg)`` runs :meth:`analogff.ff.FFNet.train_step` over the epochs; evaluation
runs inside :class:`analogff.energy.evaluation`, so its reads go to ``net.eval_counters`` and not
to the training bill.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from typing import Callable

import torch

from analogff.energy import OpCounts, evaluation
from analogff.ff import FFConfig, FFNet, elastic_distort, random_shift



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
    """RNG state of every crossbar that exposes its generator, by the name of the module that holds
    it (for exact analog resume; a locally connected layer holds a crossbar per location)."""
    out = {}
    for name, module in net.named_modules():
        g = _xbar_generator(module)
        if g is not None:
            out[name] = g.get_state()
    return out


def _set_rng_states(net: FFNet, states: dict) -> None:
    modules = dict(net.named_modules())
    for key, state in states.items():  # an int key: a checkpoint of an older version (layer index)
        _xbar_generator(net.layers[key] if isinstance(key, int) else modules[key]).set_state(state)


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

    net: an :class:`analogff.ff.FFNet`, or any net with its training interface (``train_step``,
      ``accuracy``, ``counters``, ``eval_counters``, ``optim_state``, ``head``, ``config``, ``dims``,
      ``layer_kind``, ``layers``); a net whose ``readouts`` lacks "goodness" (an unsupervised net
      read by its head only) is evaluated by its head alone.

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
        _set_rng_states(net, ck.get("xbar_rng", {}))
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
            xb = elastic_distort(x_train[idx], cfg.elastic, cfg.elastic_sigma, gen, cfg.image_side)
            xb = random_shift(xb, cfg.shift, gen, cfg.image_side).to(dev)
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
                by_goodness = "goodness" in getattr(net, "readouts", ("goodness",))
                if by_goodness and ((epoch + 1) % max(1, eval_goodness_every) == 0 or epoch + 1 == epochs):
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
