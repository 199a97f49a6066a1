"""The layers (analogff.layers): analog update rules on a fake crossbar, bias row, auto rule and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from analogff.ff import FFConfig, FFNet
from analogff.layers import AnalogLayer, DigitalLayer
from analogff.train import train_ff
from ffhelpers import FakeCrossbar, tiny_data, tiny_net

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ analog layers
def _analog(update, **kw):
    xbar = FakeCrossbar(5, 4)
    return AnalogLayer(4, 4, update=update, crossbar=xbar, **kw), xbar


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 4, generator=g), torch.randn(3, 4, generator=g)


def _with_one(x):
    return torch.cat([x, torch.ones(x.shape[0], 1)], 1)


def test_analog_forward_has_bias_row():
    layer, xbar = _analog("sgd")
    x, _ = _batch()
    assert torch.allclose(layer(x), _with_one(x) @ xbar.w.t())


def test_analog_sgd_is_plain_rank_b_update():
    layer, xbar = _analog("sgd")
    x, d = _batch()
    w0 = xbar.w.clone()
    layer.apply_update(x, d, 0.1)
    assert torch.allclose(xbar.w, w0 - 0.1 * d.t() @ _with_one(x))
    assert xbar.calls == [(3, 0.1)] and layer.periphery_state_bytes == 0


@pytest.mark.parametrize("stat", ["rms", "maxabs"])
def test_analog_normalized_fixes_update_size(stat):
    layer, xbar = _analog("normalized", norm_stat=stat)
    for scale in (1e-3, 1e3):
        x, d = _batch()
        w0 = xbar.w.clone()
        layer.apply_update(x, d * scale, 0.01)
        dw = w0 - xbar.w
        size = dw.pow(2).mean().sqrt() if stat == "rms" else dw.abs().max()
        assert math.isclose(float(size), 0.01, rel_tol=1e-4)
        direction = d.t() @ _with_one(x)
        assert torch.allclose(dw / dw.norm(), direction / direction.norm(), atol=1e-5)
    assert layer.periphery_state_bytes == 0


def test_analog_normalized_gram_matches_direct():
    # the periphery computes ||d^T x|| from Gram matrices when that is cheaper; same number
    xbar = FakeCrossbar(65, 64)
    layer = AnalogLayer(64, 64, update="normalized", crossbar=xbar)
    g = torch.Generator().manual_seed(0)
    x, d = torch.rand(4, 64, generator=g), torch.randn(4, 64, generator=g)
    w0 = xbar.w.clone()
    layer.apply_update(x, d, 0.01)
    assert math.isclose(float((w0 - xbar.w).pow(2).mean().sqrt()), 0.01, rel_tol=1e-4)
    assert layer.counters.digital_macs < 4 * 65 * 64  # no full d^T x formed


def test_analog_momentum_keeps_state_in_periphery():
    layer, xbar = _analog("momentum", momentum=0.5)
    (x1, d1), (x2, d2) = _batch(0), _batch(1)
    g1, g2 = d1.t() @ _with_one(x1), d2.t() @ _with_one(x2)
    w0 = xbar.w.clone()
    layer.apply_update(x1, d1, 0.1)
    layer.apply_update(x2, d2, 0.1)
    assert torch.allclose(xbar.w, w0 - 0.1 * g1 - 0.1 * (0.5 * g1 + g2), atol=1e-6)
    assert layer.periphery_state_bytes == 4 * 4 * 5
    assert xbar.calls[-1] == (5, 0.1)  # row-by-row transfer: one rank-one update per input row
    assert "m" in layer.state_dict()


def test_analog_adam_first_step_is_sign():
    layer, xbar = _analog("adam")
    x, d = _batch()
    w0 = xbar.w.clone()
    layer.apply_update(x, d, 0.01)
    g = d.t() @ _with_one(x)
    assert torch.allclose(w0 - xbar.w, 0.01 * torch.sign(g), atol=1e-5)
    assert layer.periphery_state_bytes == 2 * 4 * 4 * 5 + 8
    assert {"m", "v", "step"} <= set(layer.state_dict())


def test_analog_net_with_fake_crossbar_learns_and_counts_only_periphery():
    cfg = FFConfig(lr=2e-3, head_lr=1e-2, analog_update="normalized")
    net = FFNet([784, 32, 32], layer="analog", config=cfg, crossbar_factory=FakeCrossbar)
    hist = train_ff(net, tiny_data(), epochs=3, batch_size=50, seed=0, progress=False)
    assert hist[-1]["test_acc_softmax"] > 0.5
    digital = tiny_net()
    train_ff(digital, tiny_data(), epochs=3, batch_size=50, seed=0, progress=False)
    # the layers' MACs are analog: the net's digital MACs are far fewer than the digital net's
    assert net.counters.digital_macs < digital.counters.digital_macs / 2
    assert net.total_counts().mvms == sum(l.xbar.counters.mvms for l in net.layers) > 0


def test_periphery_state_bytes_digital():
    layer = DigitalLayer(10, 3, optimizer="adam")
    assert layer.periphery_state_bytes == 2 * 4 * 33



def test_auto_rule_and_onarray_errors(tmp_path):
    """auto picks onarray on a transfer compound and adam elsewhere; onarray on a single device and a
    periphery rule on a transfer compound are one-line errors naming the profile and its preset."""
    from pathlib import Path


    devices = Path(__file__).resolve().parents[1] / "devices"
    assert AnalogLayer(16, 8, device=devices / "ecram_cttv2.toml").update == "onarray"
    assert AnalogLayer(16, 8, device=devices / "ecram.toml").update == "adam"
    with pytest.raises(ValueError, match=r"'onarray' needs a transfer-compound preset.*'ecram'.*EcRamPreset"):
        AnalogLayer(16, 8, device=devices / "ecram.toml", update="onarray")
    with pytest.raises(ValueError, match=r"'adam' writes the weights row by row.*'ecram_agad'.*AGADEcRamPreset"):
        AnalogLayer(16, 8, device=devices / "ecram_agad.toml", update="adam")


def test_error_through_is_the_transposed_product_and_is_counted():
    """error_through(d) = d W (the input's error, bias column dropped); digital: MACs; analog: a
    transposed MVM on the array, counted as backward conversions (none on a forward-only FF step)."""
    from pathlib import Path

    g = torch.Generator().manual_seed(0)
    dig = DigitalLayer(6, 4, generator=g)
    d = torch.randn(3, 4, generator=g)
    assert torch.allclose(dig.error_through(d), d @ dig.linear.weight)
    assert dig.counters.digital_macs == 3 * 6 * 4
    layer, xbar = _analog("sgd")
    e = layer.error_through(d)
    assert e.shape == (3, 4) and torch.allclose(e, (d @ xbar.w)[:, :4])
    assert xbar.counters.backward_mvms == 3
    ecram = Path(__file__).resolve().parents[1] / "devices" / "ecram.toml"
    real = AnalogLayer(16, 8, device=ecram, update="sgd")
    dd = torch.randn(5, 8, generator=g)
    w = real.xbar.get_weights()[:, :16]
    out = real.error_through(dd)
    assert out.shape == (5, 16)
    assert torch.corrcoef(torch.stack([out.flatten(), (dd @ w).flatten()]))[0, 1] > 0.9  # noisy, ADC-quantised
    c = real.xbar.counters
    assert (c.backward_mvms, c.backward_dac_conversions, c.backward_adc_conversions) == (5, 5 * 8, 5 * 17)


def test_repeated_reads_average_the_noise_down_and_count_every_read():
    """AnalogLayer(reads=k): every forward MVM read k times and averaged, so the read noise's std
    falls by sqrt(k); every read's MVMs, conversions and read energy are counted (k times one
    read's), and the periphery's mean ((k - 1) adds and a multiply per output)."""
    from pathlib import Path

    from analogff.devices import load_device

    dev = load_device(Path(__file__).resolve().parents[1] / "devices" / "ecram.toml").with_overrides(
        forward__out_res=-1.0, forward__out_bound=1e6, forward__inp_res=-1.0)
    x = torch.zeros(300, 40)
    x[:, 0] = 1.0
    stds, xb, per = {}, {}, {}
    for k in (1, 4):
        lay = AnalogLayer(40, 64, device=dev, bias=False, reads=k).eval()
        exact = lay.xbar.get_weights()[:, 0] * 1.0
        stds[k] = float((lay(x) - exact).std())
        xb[k], per[k] = lay.xbar.counters, lay.counters
    assert abs(stds[4] / stds[1] - 0.5) < 0.05
    one, four = xb[1], xb[4]
    assert (four.mvms, four.dac_conversions, four.adc_conversions, four.device_reads) == \
        (4 * one.mvms, 4 * one.dac_conversions, 4 * one.adc_conversions, 4 * one.device_reads)
    assert abs(four.read_v2g_W / one.read_v2g_W - 4) < 1e-9
    assert (per[4].digital_ops - per[1].digital_ops, per[4].digital_mults - per[1].digital_mults) == \
        (3 * 300 * 64, 300 * 64)
    with pytest.raises(ValueError, match="reads=0"):
        AnalogLayer(4, 4, device=dev, reads=0)


def test_repeated_reads_go_through_any_crossbar_and_the_readout():
    """The reads are the layer's: a fake crossbar is read k times too, and the label trials'
    shared and differential reads (analogff.readout) read k times per read."""
    net = FFNet([784, 16, 12], layer="analog", config=FFConfig(analog_reads=3, label_readout="differential",
                                                             head=False, negatives="random"),
                crossbar_factory=lambda n_in, n_out, seed: FakeCrossbar(n_in, n_out, seed))
    x = torch.rand(5, 784)
    before = [lay.xbar.counters.mvms for lay in net.layers]
    net.layers[0](x)
    assert net.layers[0].xbar.counters.mvms - before[0] == 3 * 5
    before = [lay.xbar.counters.mvms for lay in net.layers]
    net.goodness_per_label(x)
    one = FFNet([784, 16, 12], layer="analog", config=FFConfig(analog_reads=1, label_readout="differential", head=False,
                                                               negatives="random"),
                crossbar_factory=lambda n_in, n_out, seed: FakeCrossbar(n_in, n_out, seed))
    b1 = [lay.xbar.counters.mvms for lay in one.layers]
    one.goodness_per_label(x)
    for lay3, lay1, a, b in zip(net.layers, one.layers, before, b1):
        assert lay3.xbar.counters.mvms - a == 3 * (lay1.xbar.counters.mvms - b)


def test_reads_default_by_rule():
    """No reads asked for: 2 with the periphery's Adam or momentum, 1 with the array's own update."""
    from analogff.layers import default_reads

    assert [default_reads(r) for r in ("adam", "momentum", "sgd", "normalized", "onarray")] == [2, 2, 1, 1, 1]
    fake = lambda: FakeCrossbar(9, 4)  # noqa: E731
    assert AnalogLayer(8, 4, update="adam", crossbar=fake()).reads == 2
    assert AnalogLayer(8, 4, update="sgd", crossbar=fake()).reads == 1
    assert AnalogLayer(8, 4, update="sgd", crossbar=fake(), reads=3).reads == 3
