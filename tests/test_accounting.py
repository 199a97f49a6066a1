"""analogff.accounting: the analytic counts of one step equal what a real step counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from analogff import accounting as cost
from analogff.energy import OpCounts, measured, total_counts
from analogff.ff import FFConfig, FFNet
from analogff.reference import BPNet, train_bp

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


class NominalCrossbar:
    """A digital stand-in for analogff.crossbar.Crossbar that counts what the real one counts for an
    MVM and an update (one pass per vector; no pulses, no read energy)."""

    def __init__(self, n_in, n_out, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = (torch.rand(n_out, n_in, generator=g) * 2 - 1) / math.sqrt(n_in)
        self.counters = OpCounts()

    def forward(self, x):
        self.counters += cost.crossbar_forward(x.shape[0], *reversed(self.w.shape))
        return x @ self.w.t()

    def update(self, x, d, lr):
        self.counters.updates += x.shape[0]
        self.w -= lr * d.t() @ x

    def update_rows(self, u, lr):
        self.counters.updates += u.shape[1]
        self.w -= lr * u


def _batch(b, n=784, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, generator=g), torch.randint(0, 10, (b,), generator=g)


def _one_step(net, b=20):
    x, y = _batch(b)
    net.train_step(x, y, torch.Generator().manual_seed(0))  # a first step (Adam state etc.)
    with measured(net) as m:
        net.train_step(x, y, torch.Generator().manual_seed(1))
    return m.counts


FF_CONFIGS = [dict(), dict(norm="batch", negatives="random"),
              dict(negatives="hard", hard_source="goodness", head=False, label_readout="overlay"),
              dict(goodness_from=0, head_from=0), dict(optimizer="momentum"), dict(optimizer="sgd")]


@pytest.mark.parametrize("opts", FF_CONFIGS)
@pytest.mark.parametrize("dims", [[784, 40, 24], [784, 500, 500]])
def test_digital_ff_step_counts_equal_a_real_step(opts, dims):
    cfg = FFConfig(**opts)
    net = FFNet(dims, layer="digital", config=cfg)
    assert _one_step(net) == cost.ff_step_counts(dims, 20, cfg, "digital")


@pytest.mark.parametrize("update", ["adam", "momentum", "normalized", "sgd"])
@pytest.mark.parametrize("dims", [[784, 40, 24], [784, 500, 500]])
@pytest.mark.parametrize("reads", [None, 1, 3])
def test_analog_ff_step_counts_equal_a_real_step_on_a_nominal_crossbar(update, dims, reads):
    cfg = FFConfig(analog_update=update, analog_reads=reads)
    net = FFNet(dims, layer="analog", config=cfg, crossbar_factory=NominalCrossbar)
    assert _one_step(net) == cost.ff_step_counts(dims, 20, cfg, "analog")


def test_analog_ff_step_counts_on_the_real_crossbar():
    """Default rule (periphery Adam) on ecram crossbars: the periphery's counts are exact; the
    crossbar's MVMs and rank-one updates are the nominal ones; pulses and read energy are simulated."""
    dims, cfg = [784, 40, 24], FFConfig(engine="torch")
    net = FFNet(dims, layer="analog", device=str(ROOT / "devices" / "ecram.toml"), config=cfg)
    real, want = _one_step(net), cost.ff_step_counts(dims, 20, cfg, "analog")
    for f in ("digital_macs", "digital_ops", "digital_mults", "digital_special_ops", "sram_bytes", "dram_bytes",
              "updates", "backward_mvms", "backward_dac_conversions", "backward_adc_conversions"):
        assert getattr(real, f) == getattr(want, f), f
    # bound-management retries add MVM passes (counted by the crossbar), never fewer
    for f in ("mvms", "dac_conversions", "adc_conversions", "device_reads"):
        assert getattr(real, f) >= getattr(want, f) > 0, f
    assert real.update_pulses > 0 and real.read_v2g_W > 0 and want.update_pulses == 0


@pytest.mark.parametrize("optimizer, momentum, rule", [("adam", 0.9, "adam"), ("sgd", 0.0, "sgd"), ("sgd", 0.9, "momentum")])
@pytest.mark.parametrize("dims", [[784, 40, 24, 10], [784, 500, 500, 10]])
def test_bp_step_counts_equal_a_real_step(dims, optimizer, momentum, rule):
    net = BPNet(dims, optimizer=optimizer, momentum=momentum)
    x, y = _batch(30)
    train_bp(net, x, y, epochs=1, batch_size=30, lr=1e-3)
    assert total_counts(net) == cost.bp_step_counts(dims, 30, rule)


def test_bp_macs_equal_the_matmul_work_torch_does():
    """The analytic BP MACs are the multiply-accumulates of torch's own forward and backward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    dims, b = [784, 40, 24, 10], 30
    net = BPNet(dims)
    x, y = _batch(b)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(net(x), y).backward()
    assert fc.get_total_flops() == 2 * cost.bp_step_counts(dims, b).digital_macs


def test_one_residency_rule_and_one_optimiser_table():
    # digital FF 784-500-500 and BP 784-500-500-10 (Adam) keep ~10 MB of state: both stream it from DRAM
    ff = FFNet([784, 500, 500], layer="digital")
    assert ff.resident_bytes > cost.DEFAULT_SRAM_CAPACITY_BYTES and all(lay.state_in_dram for lay in ff.layers)
    assert BPNet([784, 500, 500, 10]).peak_memory(100)["state_in_sram"] is False
    # a bigger SRAM holds it: the same rule with another capacity
    assert not cost.state_in_dram(ff.resident_bytes, 16 << 20)
    assert cost.digital_resident_bytes(10, "adam") == 4 * 4 * 10
    assert cost.optimizer("sgd_momentum") is cost.OPTIMIZERS["momentum"]
    with pytest.raises(ValueError, match="optimizer"):
        cost.optimizer("lion")



def test_inference_residency_is_the_weights_only():
    """The same rule in inference, on the state inference keeps: the digital weights (BPNet does the same)."""
    ana = FFNet([784, 500, 500], layer="analog", crossbar_factory=NominalCrossbar)
    assert ana.head.state_in_dram  # training: m and v (5 MB) do not fit 1 MiB
    ana.eval()
    assert not ana.head.state_in_dram and ana.inference_resident_bytes == 4 * (500 * 10 + 10)
    ana.train()
    assert ana.head.state_in_dram
    dig = FFNet([784, 500, 500], layer="digital").eval()
    assert dig.layers[0].state_in_dram  # 2.6 MB of weights
    assert BPNet([784, 500, 500, 10]).peak_memory(100)["inference_weights_in_sram"] is False


def test_worked_example_in_docs_matches_the_code():
    """docs/energy.md's worked example: one digital FF step of 784-500-500, batch 100."""
    c = cost.ff_step_counts([784, 500, 500], 100, FFConfig(), "digital")
    text = (ROOT / "docs" / "energy.md").read_text()
    for f in ("digital_macs", "digital_ops", "digital_mults", "digital_special_ops", "sram_bytes", "dram_bytes"):
        assert f"{getattr(c, f):,}" in text, f
