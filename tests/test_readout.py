"""Goodness prediction's label readouts (FFConfig.label_readout): same scores as the overlay where
reads are exact, fewer and cheaper reads where they share, less noise where they differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analogff.devices import load_device
from analogff.energy import measured
from analogff.ff import LABEL_READOUTS, FFConfig, FFNet
from analogff.readout import first_layer_trials

from ffhelpers import FakeCrossbar, tiny_net

DEVICES = Path(__file__).resolve().parents[1] / "devices"
K = 10


def exact_periphery():
    """ecram with no output noise, no DAC/ADC quantisation, no ADC bound: exact reads."""
    return load_device(DEVICES / "ecram.toml").with_overrides(
        forward__inp_res=-1.0, forward__out_res=-1.0, forward__out_noise=0.0, forward__bound_management="NONE",
        forward__out_bound=1e9)


def images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 784, generator=torch.Generator().manual_seed(seed)) * 0.8


def analog_net(readout: str, device=None, dims=(784, 24, 16), **cfg) -> FFNet:
    """An analog net reading each MVM once (the readouts' read structure; repeated reads multiply it:
    tests/test_layers.py)."""
    cfg = {"analog_reads": 1, **cfg}
    return FFNet(list(dims), layer="analog", device=device if device is not None else exact_periphery(),
                 config=FFConfig(label_readout=readout, **cfg)).eval()


def exact_reads(net: FFNet) -> None:
    """Every crossbar of net computes rows @ W^T of its stored weights from now on."""
    for lay in net.layers:
        w = lay.xbar.get_weights()
        lay.xbar.forward = (lambda w: lambda v: v @ w.t())(w)


@pytest.mark.parametrize("readout", LABEL_READOUTS)
def test_readouts_give_the_overlay_scores_on_digital_nets(readout):
    x = images(7)
    ref = tiny_net().goodness_per_label(x)
    net = tiny_net(label_readout=readout)
    assert torch.allclose(net.goodness_per_label(x), ref, rtol=1e-5, atol=1e-6)
    net.config.goodness_from = 0
    ref0 = tiny_net(goodness_from=0).goodness_per_label(x)
    assert torch.allclose(net.goodness_per_label(x), ref0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("readout", LABEL_READOUTS)
def test_readouts_give_the_overlay_scores_on_exact_arrays(readout):
    x = images(6)
    ref = analog_net("overlay").goodness_per_label(x)
    got = analog_net(readout).goodness_per_label(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-6), float((got - ref).abs().max())
    fake = FFNet([784, 24, 16], layer="analog", crossbar_factory=FakeCrossbar,  # no row selection
                 config=FFConfig(label_readout=readout))
    fake_ref = FFNet([784, 24, 16], layer="analog", crossbar_factory=FakeCrossbar)
    assert torch.allclose(fake.goodness_per_label(x), fake_ref.goodness_per_label(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("readout", LABEL_READOUTS)
def test_array_reads_are_counted_row_by_row(readout):
    b, reads = 12, 5
    net = analog_net(readout, label_reads=reads)
    with measured(net):
        net.goodness_per_label(images(b))
        c0, c1 = net.layers[0].xbar.counters, net.layers[1].xbar.counters
        rows0, rows1 = 784 + 1, 24 + 1  # with the bias row
        if readout == "overlay":
            assert (c0.mvms, c0.dac_conversions) == (K * b, K * b * rows0)
        else:  # the image and bias rows once per sample, each label row `reads` times alone
            assert (c0.mvms, c0.dac_conversions) == (b + K * reads, b * (rows0 - K) + K * reads)
            assert c0.device_reads == 2 * c0.dac_conversions * 24
        if readout == "differential":  # the trials' mean (bias row driven) + each difference (not)
            assert (c1.mvms, c1.dac_conversions) == ((K + 1) * b, b * rows1 + K * b * 24)
        else:
            assert (c1.mvms, c1.dac_conversions) == (K * b, K * b * rows1)
        assert c0.adc_conversions == c0.mvms * 24 and c1.adc_conversions == c1.mvms * 16


def test_label_reads_are_at_most_the_batch():
    net = analog_net("shared", label_reads=32)
    with measured(net):
        net.goodness_per_label(images(3))
        assert net.layers[0].xbar.counters.mvms == 3 + K * 3


def test_shared_first_layer_counts_its_macs_once_on_a_digital_net():
    b = 9
    macs = {}
    for readout in ("overlay", "shared"):
        net = tiny_net(label_readout=readout, goodness_from=1)
        with measured(net) as m:
            net.goodness_per_label(images(b))
        macs[readout] = m.counts.digital_macs
    # tiny_net: 784-32-32; goodness of layer 1 (32 MACs per trial), length norm of layer 0 (32 per trial)
    rest = K * b * (32 * 32 + 32 + 32)
    assert macs["overlay"] == K * b * 784 * 32 + rest
    assert macs["shared"] == b * (784 - K) * 32 + rest


def test_differential_read_tells_the_labels_apart_with_less_noise():
    """ecram's read noise: the labels' score differences (scores minus their mean over labels) of
    a random net, read on the array, against the same net read exactly."""
    x = images(40)
    err = {}
    for readout in LABEL_READOUTS:
        net = analog_net(readout, device=load_device(DEVICES / "ecram.toml"), dims=(784, 64, 64))
        noisy = net.goodness_per_label(x)
        exact_reads(net)
        exact = net.goodness_per_label(x)
        centred = lambda s: s - s.mean(1, keepdim=True)  # noqa: E731
        err[readout] = float((centred(noisy) - centred(exact)).norm() / centred(exact).norm())
    assert err["differential"] < 0.3 * err["overlay"], err
    assert err["shared"] < err["overlay"], err


def test_more_label_reads_average_the_label_rows_noise():
    x = images(64)
    errs = []
    for reads in (1, 64):
        net = analog_net("shared", device=load_device(DEVICES / "ecram.toml"), label_reads=reads)
        z = first_layer_trials(net, x).view(K, 64, -1)
        w = net.layers[0].xbar.get_weights()
        lab = (z - z[0:1])[:, 0]  # label c minus label 0, one sample: the label rows' part only
        errs.append(float((lab - (w[:, :K] - w[:, :1]).t()).std()))
    assert errs[1] < 0.3 * errs[0], errs


def test_label_readout_options_are_checked():
    with pytest.raises(ValueError, match="label_readout"):
        FFConfig(label_readout="twice")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="label_reads"):
            FFConfig(label_reads=bad)
