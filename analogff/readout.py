"""How goodness prediction reads its label trials on a net's layers (``FFConfig.label_readout``).

Goodness prediction scores each of the k labels by a pass with that label overlaid. The k trials
of a sample differ only in their label pixels, and on an analog array each read carries its own
output noise, proportional (abs-max noise management) to the largest value it drives. So the
trials are read for what they share (:meth:`analogff.ff.FFNet.goodness_per_label` lists the modes):

* ``"shared"``: the first layer reads the image (and bias) rows once per sample, and each label row
  alone (``label_reads`` reads averaged, once per batch); the label part is added digitally;
* ``"differential"``: "shared", and every deeper analog layer reads the trials' mean once per
  sample and each trial's difference from it (k + 1 reads, not k), added digitally: the read noise
  that tells the labels apart shrinks with the differences.

Every read is a real crossbar read of the rows it drives (``Crossbar.forward(x, rows=...)``),
counted by the crossbar; the means, differences and sums are counted as digital work.
Measured (``benchmarks/readout.py``, ``benchmarks/results/readout_1218739.txt``): on
Fashion-MNIST the analog goodness readout loses 9 pp against digital FF with k independent full
reads and 0.4 pp with the differential read, at 44 % less inference energy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from analogff import accounting as cost
from analogff.counts import OpCounts
from analogff.layers import AnalogLayer, DigitalLayer

if TYPE_CHECKING:
    from analogff.ff import FFNet


def label_trial_activities(net: "FFNet", x: torch.Tensor) -> list[torch.Tensor]:
    """ReLU activities of every layer for the k label trials of x, (k * B, n) each, label-major
    (rows c*B..(c+1)*B-1: label c), read as ``config.label_readout`` says."""
    cfg, k = net.config, net.config.num_classes
    b = x.shape[0]
    hs: list[torch.Tensor] = []
    z, inp = first_layer_trials(net, x), x
    for i, layer in enumerate(net.layers):
        if i > 0:
            z = (differential_read(net, layer, inp, k, b)
                 if cfg.label_readout == "differential" and isinstance(layer, AnalogLayer) else layer(inp))
        h = net._relu(z)
        hs.append(h)
        if i + 1 < len(net.layers):
            inp = net.normalize(i, h)
    return hs

def first_layer_trials(net: "FFNet", x: torch.Tensor) -> torch.Tensor:
    """First-layer pre-activations of the k label trials, (k * B, n): the image part (label
    pixels not driven) once per sample plus each label row's contribution."""
    cfg, k = net.config, net.config.num_classes
    b, lay = x.shape[0], net.layers[0]
    img = x[:, k:]
    if isinstance(lay, DigitalLayer):
        w, bias = lay.linear.weight, lay.linear.bias
        n_out = w.shape[0]
        z_img = F.linear(img, w[:, k:], bias)
        net.counters += cost.linear_forward(b, w.shape[1] - k, n_out, bias is not None, lay.state_in_dram)
        z_lab = cfg.label_value * w[:, :k].t()  # (k, n): label c's column of W, scaled
        net.counters += OpCounts(digital_mults=k * n_out)
    elif isinstance(lay, AnalogLayer):
        n_out = lay.n_out
        n_rows = lay.n_in + int(lay.bias)
        z_img = analog_read(net, lay, lay._rows(x)[:, k:], torch.arange(k, n_rows))  # image + bias rows
        r = min(cfg.label_reads, b)
        drive = torch.full((r, 1), cfg.label_value, dtype=x.dtype, device=x.device)
        z_lab = torch.stack([analog_read(net, lay, drive * lay.input_gain, torch.tensor([c])).mean(0)
                             for c in range(k)])
        net.counters += OpCounts(digital_ops=k * (r - 1) * n_out, digital_mults=k * n_out)  # the means
    else:
        raise TypeError(f"label_readout={cfg.label_readout!r} needs a DigitalLayer or AnalogLayer first layer, "
                        f"not {type(lay).__name__}")
    net.counters += OpCounts(digital_ops=k * b * n_out,
                              sram_bytes=cost.BYTES_PER_VALUE * k * b * n_out)  # z_img + z_lab[c], stored
    return (z_img.unsqueeze(0) + z_lab.to(z_img).unsqueeze(1)).reshape(k * b, n_out)

def analog_read(net: "FFNet", lay: AnalogLayer, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A read of an analog layer's array driving only ``rows`` (array rows, the bias row included)
    with ``values`` (B, len(rows)), already scaled by the layer's input gain (``AnalogLayer.read``:
    its ``reads`` averaged); the output in the layer's units (divided by the gain)."""
    b = values.shape[0]
    net.counters += cost.analog_periphery_io(b, rows.numel(), lay.n_out)
    y = lay.read(values, rows)
    return y / lay.input_gain if lay.input_gain != 1.0 else y

def differential_read(net: "FFNet", lay: AnalogLayer, inp: torch.Tensor, k: int, b: int) -> torch.Tensor:
    """Pre-activations of an analog layer for the k label trials inp (k * B, n_in), label-major:
    one read of the trials' mean u0 (with the bias row) per sample plus one read of each
    trial's difference u_c - u0 (bias row not driven), added digitally."""
    n_in = inp.shape[1]
    u = inp.view(k, b, n_in)
    u0 = u.mean(0)  # (B, n_in), digital: k - 1 adds and one multiply per value
    delta = (u - u0.unsqueeze(0)).reshape(k * b, n_in)
    net.counters += OpCounts(digital_ops=(k - 1) * b * n_in + k * b * n_in, digital_mults=b * n_in)
    z0 = analog_read(net, lay, lay._rows(u0), torch.arange(lay.n_in + int(lay.bias)))
    dz = analog_read(net, lay, delta * lay.input_gain, torch.arange(lay.n_in))
    net.counters += OpCounts(digital_ops=k * b * lay.n_out)  # z0 + dz_c
    return (dz.view(k, b, -1) + z0.unsqueeze(0)).reshape(k * b, lay.n_out)
