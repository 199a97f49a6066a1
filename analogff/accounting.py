"""Energy accounting in one place: the counting rules every method shares.

A step's bill is made of a few primitive costs (a digital linear layer's forward pass, an optimiser
step, a ReLU, a length normalisation, ...). Each primitive is a function here that returns an
:class:`~analogff.energy.OpCounts`; the simulated nets (``analogff.ff``, ``analogff.reference``)
add these counts where they do the work, and :func:`ff_step_counts` / :func:`bp_step_counts`
compose the same functions into the analytic counts of one training step, so anyone can redo a bill
by hand (``docs/energy.md``, "A worked example"). ``tests/test_accounting.py`` checks that the
analytic counts equal what a real step counts.

Shared rules
------------
* Every digital value is fp32: :data:`BYTES_PER_VALUE` = 4 bytes (the energy model's default
  ``digital_precision``).
* One optimiser table, :data:`OPTIMIZERS`: element-wise work and state per parameter.
* One residency rule, :func:`state_in_dram`: a net's *resident state* (every digital value kept
  from one step to the next: weights, gradients and optimiser state of digital layers, including FF's
  softmax head; the analog periphery's m and v) lives in on-chip SRAM if it fits in
  ``sram_capacity_bytes`` (default :data:`DEFAULT_SRAM_CAPACITY_BYTES`, 1 MiB), otherwise all of it
  streams from DRAM every step. Activations always live in SRAM. The SRAM's energy per byte follows
  its capacity (``EnergyConstants.sram_J_per_byte``, docs/energy.md, "Memory").
* Element-wise digital work is counted by kind (priced by kind in ``analogff.energy``):
  ``digital_ops`` adds, subtractions and compares; ``digital_mults`` multiplies;
  ``digital_special_ops`` divides, square roots, exponentials and logarithms.
* Analog counts of the crossbar (MVMs, DAC/ADC conversions, cells read, rank-one updates) are counted
  by ``analogff.crossbar`` itself; :func:`crossbar_forward` / :func:`crossbar_update` give their
  nominal values (one pass per vector, no bound-management retries), and the programming pulses and
  read energy depend on the data and come from the simulation only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from analogff.energy import DEFAULT_SRAM_CAPACITY_BYTES, OpCounts

__all__ = [
    "BYTES_PER_VALUE", "DEFAULT_SRAM_CAPACITY_BYTES", "SOFTMAX_CE_OPS_PER_CLASS", "Optimizer", "OPTIMIZERS",
    "optimizer", "state_in_dram", "resident_state", "digital_resident_bytes", "linear_forward",
    "optimizer_step", "digital_update", "analog_periphery_io", "analog_update", "crossbar_forward",
    "crossbar_update", "relu", "length_norm", "batch_norm", "goodness_scores", "ff_layer_loss", "head_loss",
    "ff_step_counts", "bp_step_counts",
]

#: bytes of one digital value (fp32)
BYTES_PER_VALUE = 4
#: softmax cross-entropy per sample and class: max, subtract, exp, sum, log/pick (BP's loss)
SOFTMAX_CE_OPS_PER_CLASS = 5


@dataclass(frozen=True)
class Optimizer:
    """Per-parameter cost of one optimiser step, by kind, and the state values it keeps."""

    adds_per_param: int  #: adds / subtractions (``digital_ops``)
    mults_per_param: int  #: multiplies (``digital_mults``)
    special_per_param: int  #: square roots, divides (``digital_special_ops``)
    state_per_param: int  #: optimiser state values per parameter (read and written every step)


#: Adam: m <- b1 m + (1-b1) g (2 multiplies, 1 add), v <- b2 v + (1-b2) g^2 (3, 1),
#: denom = sqrt(v) / sqrt(bc2) + eps (a root, 1 multiply, 1 add), p <- p - (lr/bc1) m / denom
#: (a divide, 1 multiply, 1 add): 4 adds, 7 multiplies, 2 special. SGD: p <- p - lr g (1, 1).
#: SGD with momentum: buf <- mu buf + g, p <- p - lr buf (2, 2). The analog periphery uses the same
#: entry for the update it transfers to the array (which then applies it as pulses).
OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(1, 1, 0, 0),
    "momentum": Optimizer(2, 2, 0, 1),
    "adam": Optimizer(4, 7, 2, 2),
}


def _optimizer_ops(o: Optimizer, n: int) -> OpCounts:
    return OpCounts(digital_ops=o.adds_per_param * n, digital_mults=o.mults_per_param * n,
                    digital_special_ops=o.special_per_param * n)
_ALIASES = {"sgd_momentum": "momentum"}


def optimizer(name: str) -> Optimizer:
    """The :data:`OPTIMIZERS` entry of ``name`` ("adam", "sgd", "momentum" or "sgd_momentum")."""
    key = _ALIASES.get(name, name)
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key]


# ---------------------------------------------------------------------------------------------
# Residency
# ---------------------------------------------------------------------------------------------
def state_in_dram(resident_bytes: int, sram_capacity_bytes: int = DEFAULT_SRAM_CAPACITY_BYTES) -> bool:
    """The one residency rule: resident state that does not fit the SRAM streams from DRAM."""
    return resident_bytes > sram_capacity_bytes


def resident_state(nbytes: int, in_dram: bool) -> OpCounts:
    """``nbytes`` of resident state moved (read or written): to DRAM or SRAM by the rule above."""
    return OpCounts(dram_bytes=nbytes) if in_dram else OpCounts(sram_bytes=nbytes)


def digital_resident_bytes(n_params: int, optimizer_name: str) -> int:
    """Resident state of a digital layer: weights, gradients and optimiser state, bytes."""
    return BYTES_PER_VALUE * (2 + optimizer(optimizer_name).state_per_param) * n_params


# ---------------------------------------------------------------------------------------------
# Primitive costs
# ---------------------------------------------------------------------------------------------
def linear_forward(b: int, n_in: int, n_out: int, bias: bool = True, in_dram: bool = False) -> OpCounts:
    """A digital layer's forward pass on ``b`` vectors: MACs, bias adds, activations in and out
    (SRAM), the weights read once per mini-batch (resident state)."""
    n_params = n_in * n_out + (n_out if bias else 0)
    return OpCounts(digital_macs=b * n_in * n_out, digital_ops=b * n_out if bias else 0,
                    sram_bytes=BYTES_PER_VALUE * b * (n_in + n_out)) \
        + resident_state(BYTES_PER_VALUE * n_params, in_dram)


def optimizer_step(optimizer_name: str, n_params: int, in_dram: bool = False) -> OpCounts:
    """One optimiser step of a digital layer: element-wise ops, and the resident traffic of the
    gradient (written, read), the weights (read, written) and each state value (read, written)."""
    o = optimizer(optimizer_name)
    return _optimizer_ops(o, n_params) + resident_state(BYTES_PER_VALUE * (4 + 2 * o.state_per_param) * n_params, in_dram)


def digital_update(b: int, n_in: int, n_out: int, optimizer_name: str, bias: bool = True,
                   in_dram: bool = False) -> OpCounts:
    """A digital FF layer's local update: gradient d^T x (and the bias gradient), x and d read from
    SRAM, then the optimiser step."""
    n_params = n_in * n_out + (n_out if bias else 0)
    return OpCounts(digital_macs=b * n_in * n_out + (b * n_out if bias else 0),
                    sram_bytes=BYTES_PER_VALUE * b * (n_in + n_out)) \
        + optimizer_step(optimizer_name, n_params, in_dram)


def analog_periphery_io(b: int, n_in: int, n_out: int) -> OpCounts:
    """The periphery streams ``b`` vectors of ``n_in`` values to the array drivers and takes ``n_out``
    values back (activations, SRAM)."""
    return OpCounts(sram_bytes=BYTES_PER_VALUE * b * (n_in + n_out))


def analog_update(rule: str, b: int, rows: int, n_out: int, in_dram: bool = False,
                  gram: bool | None = None) -> OpCounts:
    """The analog periphery's part of an update ``W <- W - lr U`` on a ``rows x n_out`` array
    (``rows`` includes the bias row): x and d streamed to the drivers, and for

    * ``"sgd"``, ``"onarray"``: nothing else (the array forms lr d^T x itself with pulses; a transfer
      compound's own periphery work, H and its reads, is counted by the crossbar);
    * ``"normalized"``: the RMS of d^T x (through the Gram matrices when ``gram``, else formed), a
      divide and a square root, and d rescaled (``b n_out`` multiplies);
    * ``"momentum"`` / ``"adam"``: d^T x formed digitally, then the optimiser's element-wise work and
      state traffic (m, and v for Adam) from :data:`OPTIMIZERS` (no weight traffic: the weights are on
      the array).
    """
    c = analog_periphery_io(b, rows, n_out)
    n = rows * n_out
    if rule in ("sgd", "onarray"):  # onarray: the transfer compound's periphery work is the crossbar's
        return c
    if rule == "normalized":
        if gram is None:
            gram = b * (rows + n_out) < n
        c.digital_macs += (b * b * (rows + n_out) + b * b) if gram else b * n
        c.digital_mults += b * n_out
        c.digital_special_ops += 2  # the mean's divide and the square root
        return c
    o = optimizer(rule)
    c.digital_macs += b * n
    return c + _optimizer_ops(o, n) + resident_state(BYTES_PER_VALUE * 2 * o.state_per_param * n, in_dram)


def crossbar_forward(b: int, rows: int, cols: int, devices_per_weight: int = 2) -> OpCounts:
    """Nominal analog counts of ``b`` forward MVMs on a ``rows x cols`` tile (one pass each)."""
    return OpCounts(mvms=b, dac_conversions=b * rows, adc_conversions=b * cols,
                    device_reads=devices_per_weight * b * rows * cols)


def crossbar_update(rank_one_updates: int) -> OpCounts:
    """An array update made of ``rank_one_updates`` rank-one pulse updates (pulses: simulated)."""
    return OpCounts(updates=rank_one_updates)


def relu(n: int) -> OpCounts:
    """ReLU of ``n`` values: one compare each."""
    return OpCounts(digital_ops=n)


def length_norm(b: int, n: int) -> OpCounts:
    """h / (rms(h) + eps) over ``b`` rows of ``n``: per row the squares summed (``n`` MACs), times 1/n
    (a multiply), the root and its reciprocal (2 special ops), the eps add, then ``n`` multiplies by
    the reciprocal."""
    return OpCounts(digital_macs=b * n, digital_mults=b * n + b, digital_ops=b, digital_special_ops=2 * b)


def dropout(b: int, n: int) -> OpCounts:
    """Inverted dropout of ``b`` rows of ``n``: a compare of each value's uniform with p and a multiply
    by the mask times 1 / (1 - p) (the random bits themselves are not priced)."""
    return OpCounts(digital_ops=b * n, digital_mults=b * n)


def batch_norm(b: int, n: int, update_stats: bool) -> OpCounts:
    """(h - mean) / sqrt(var + eps) over ``b`` rows of ``n``: subtract and multiply per value, per unit
    the eps add, root and reciprocal. With ``update_stats``: the batch mean (adds, times 1/b) and
    variance (subtract, square-accumulate, times 1/b) and the two running averages (2 multiplies and
    an add each)."""
    c = OpCounts(digital_ops=b * n + n, digital_mults=b * n, digital_special_ops=2 * n)
    if update_stats:
        c += OpCounts(digital_macs=b * n, digital_ops=2 * b * n + 2 * n, digital_mults=6 * n)
    return c


def linear_backward(b: int, n_in: int, n_out: int, in_dram: bool = False) -> OpCounts:
    """A digital layer's transposed product d W on ``b`` errors: MACs, the error in and the result
    out (SRAM), the weights read once more (resident state)."""
    return OpCounts(digital_macs=b * n_in * n_out, sram_bytes=BYTES_PER_VALUE * b * (n_in + n_out)) \
        + resident_state(BYTES_PER_VALUE * n_in * n_out, in_dram)


def norm_backward(b: int, n: int, kind: str) -> OpCounts:
    """An error taken back through the normalisation between layers over ``b`` rows of ``n``, then
    through the ReLU (a multiply by its 0/1 derivative per value). Length norm: per row the dot
    product g.h (``n`` MACs), two multiplies for its scale, then per value a multiply-add and a
    multiply. Batch norm: per unit the means of g and g y (``2 b`` MACs and adds, 2 multiplies),
    per value 2 subtractions and 2 multiplies."""
    if kind == "length":
        return OpCounts(digital_macs=2 * b * n, digital_mults=2 * b * n + 2 * b, digital_ops=b * n)
    return OpCounts(digital_macs=2 * b * n, digital_ops=2 * b * n + 2 * b * n, digital_mults=3 * b * n + 2 * n)


def goodness_scores(n: int) -> OpCounts:
    """Sum of squares over ``n`` activities (a label's goodness)."""
    return OpCounts(digital_macs=n)


def ff_layer_loss(b: int, n: int) -> OpCounts:
    """FF loss and local error of one layer on ``b`` positive + ``b`` negative rows of ``n`` units:
    the goodness of each row (sum of squares, ``n`` MACs), per (positive, negative) pair the loss's
    difference, sigmoid and softplus (3 adds, 3 multiplies, an exp, a reciprocal and a log), and the
    local error d = (dL/dG) 2 h (a multiply per unit); h written and read back (SRAM)."""
    h = 2 * b * n
    return OpCounts(digital_macs=h, digital_mults=h + 3 * b, digital_ops=3 * b, digital_special_ops=3 * b,
                    sram_bytes=2 * BYTES_PER_VALUE * h)


def head_loss(b: int, k: int) -> OpCounts:
    """Softmax of ``k`` logits over ``b`` rows and cross-entropy's error (p - onehot) / b: the max,
    subtract and sum (3 adds/compares per logit), exp per logit and one reciprocal per row
    (special), the normalisation and the 1/b (2 multiplies per logit)."""
    return OpCounts(digital_ops=3 * b * k, digital_mults=2 * b * k, digital_special_ops=b * k + b)


# ---------------------------------------------------------------------------------------------
# Analytic step counts
# ---------------------------------------------------------------------------------------------
def _rule(cfg: Any) -> str:
    """The analog rule of an FFConfig for the analytic counts: "auto" is "adam" (the analytic counts
    are those of a single-device profile; a transfer compound's work depends on the data)."""
    return "adam" if cfg.analog_update == "auto" else cfg.analog_update


def _ff_resident(dims: Sequence[int], layer: str, cfg: Any, head_in: int) -> int:
    """Resident state bytes of an FF net (the residency rule's input)."""
    k, n = cfg.num_classes, 0
    if cfg.head:
        n += digital_resident_bytes(head_in * k + k, "adam")
    for n_in, n_out in zip(dims[:-1], dims[1:]):
        if layer == "digital":
            n += digital_resident_bytes(n_in * n_out + n_out, cfg.optimizer)
        elif _rule(cfg) in ("momentum", "adam"):
            state = optimizer(_rule(cfg)).state_per_param
            n += BYTES_PER_VALUE * state * n_out * (n_in + int(cfg.analog_bias)) + (8 if _rule(cfg) == "adam" else 0)
    return n


def ff_step_counts(dims: Sequence[int], batch: int, config: Any = None, layer: str = "digital",
                   sram_capacity_bytes: int = DEFAULT_SRAM_CAPACITY_BYTES) -> OpCounts:
    """Analytic counts of one FF training step (``analogff.ff.FFNet.train_step``) on ``batch`` samples.

    ``config``: an ``analogff.ff.FFConfig`` (default: its defaults). For analog layers the crossbar
    part is nominal (:func:`crossbar_forward`, no bound-management retries; no pulses, no read
    energy: those come from the simulation). Follows the step: the neutral pass and the head's update,
    the negative labels (by goodness: ``classes`` more passes), then each layer on the 2 x batch
    positive and negative rows: forward, ReLU, loss and local error, normalisation, local update.
    """
    if config is None:
        from analogff.ff import FFConfig

        config = FFConfig()
    cfg, b, k = config, int(batch), config.num_classes
    if cfg.negatives == "hard" and cfg.hard_source == "goodness" and getattr(cfg, "label_readout", "overlay") != "overlay":
        raise ValueError("ff_step_counts models hard negatives by goodness with label_readout='overlay' only; "
                         "count real steps instead (analogff.counts.measured)")
    if getattr(cfg, "pairwise", False):
        raise ValueError("ff_step_counts does not model pairwise learning (its counts alternate step by step); "
                         "count real steps instead (analogff.counts.measured)")
    layers = list(zip(dims[:-1], dims[1:]))
    n_layers = len(layers)
    head_from = min(cfg.head_from, n_layers - 1)
    good_from = min(cfg.goodness_from, n_layers - 1)
    head_in = sum(dims[1 + head_from:])
    dram = state_in_dram(_ff_resident(dims, layer, cfg, head_in), sram_capacity_bytes)
    bias = cfg.analog_bias

    reads = getattr(cfg, "analog_reads", 1)
    if reads is None:  # AnalogLayer's default for the rule
        from analogff.layers import default_reads  # layers imports this module

        reads = default_reads(_rule(cfg))

    def fwd(rows_b: int, n_in: int, n_out: int) -> OpCounts:
        if layer == "digital":
            return linear_forward(rows_b, n_in, n_out, True, dram)
        c = analog_periphery_io(rows_b, n_in, n_out)
        for _ in range(reads):  # AnalogLayer.read: every read a crossbar MVM, then their mean
            c += crossbar_forward(rows_b, n_in + int(bias), n_out)
        if reads > 1:
            c += OpCounts(digital_ops=(reads - 1) * rows_b * n_out, digital_mults=rows_b * n_out)
        return c

    def norm(rows_b: int, n: int, update_stats: bool = False) -> OpCounts:
        return length_norm(rows_b, n) if cfg.norm == "length" else batch_norm(rows_b, n, update_stats)

    def activities(rows_b: int) -> OpCounts:
        c = OpCounts()
        for i, (n_in, n_out) in enumerate(layers):
            c += fwd(rows_b, n_in, n_out) + relu(rows_b * n_out)
            if i + 1 < n_layers:
                c += norm(rows_b, n_out)
        return c

    total = OpCounts()
    if cfg.head:
        total += activities(b)
        for i, (_, n_out) in enumerate(layers):
            if i >= head_from:
                total += norm(b, n_out)
        total += linear_forward(b, head_in, k, True, dram) + head_loss(b, k)
        total += digital_update(b, head_in, k, "adam", True, dram)
    if cfg.negatives == "hard" and cfg.hard_source == "goodness":
        total += activities(k * b) + goodness_scores(k * b * sum(n for _, n in layers[good_from:]))
    for n_in, n_out in layers:
        total += fwd(2 * b, n_in, n_out) + relu(2 * b * n_out) + ff_layer_loss(b, n_out)
        total += norm(2 * b, n_out, update_stats=True)
        if layer == "digital":
            total += digital_update(2 * b, n_in, n_out, cfg.optimizer, True, dram)
        else:
            rows = n_in + int(bias)
            total += analog_update(_rule(cfg), 2 * b, rows, n_out, dram)
            total += crossbar_update(2 * b if _rule(cfg) in ("sgd", "normalized", "onarray") else rows)
    return total


def bp_step_counts(dims: Sequence[int], batch: int, optimizer_name: str = "adam",
                   sram_capacity_bytes: int = DEFAULT_SRAM_CAPACITY_BYTES) -> OpCounts:
    """Analytic counts of one digital backprop step (``analogff.reference.BPNet``) on ``batch`` samples.

    MACs: forward ``B n_in n_out`` per layer; backward: weight gradient per layer and input gradient
    per layer but the first. Element-wise: bias adds, ReLUs, softmax cross-entropy
    (:data:`SOFTMAX_CE_OPS_PER_CLASS` per class, of which exp and log/divide are special ops), the
    loss gradient, ReLU masks, bias gradients, the optimiser step. Memory: resident state (weights read
    by the forward pass and again by each layer that propagates an input gradient, the optimiser
    step's traffic) by the residency rule; activations stored for the backward pass and the backward
    error vectors written and read (SRAM).
    """
    b, shapes, classes = int(batch), list(zip(dims[:-1], dims[1:])), dims[-1]
    hidden_outs = sum(o for _, o in shapes[:-1])
    all_outs = sum(o for _, o in shapes)
    p = sum(i * o + o for i, o in shapes)
    fwd_macs = b * sum(i * o for i, o in shapes)
    bwd_macs = b * (sum(i * o for i, o in shapes) + sum(i * o for i, o in shapes[1:]))
    ce_special = 2  # exp and log/divide of the 5 softmax cross-entropy ops per class
    ops = b * (all_outs + hidden_outs + (SOFTMAX_CE_OPS_PER_CLASS - ce_special) * classes)  # forward
    ops += b * (classes + hidden_outs + all_outs)  # backward: loss grad, ReLU mask, bias grad
    dram = state_in_dram(digital_resident_bytes(p, optimizer_name), sram_capacity_bytes)
    w_reads = p + sum(i * o + o for i, o in shapes[1:])  # forward + backward of layers with an input grad
    stored = sum(i for i, _ in shapes) + hidden_outs + classes
    errors = classes + sum(i for i, _ in shapes[1:])
    return (OpCounts(digital_macs=fwd_macs + bwd_macs, digital_ops=ops,
                     digital_special_ops=b * ce_special * classes,
                     sram_bytes=b * 2 * (stored + errors) * BYTES_PER_VALUE)
            + resident_state(w_reads * BYTES_PER_VALUE, dram) + optimizer_step(optimizer_name, p, dram))
