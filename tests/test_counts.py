"""Tests of analogff.counts: OpCounts arithmetic, and measured/evaluation blocks that keep inference
out of the training counters."""

from __future__ import annotations

from analogff.counts import OpCounts, measured


def test_opcounts_add_scale_reset_copy():
    a = OpCounts(mvms=2, read_v2g_W=1.5, sram_bytes=10)
    b = OpCounts(mvms=3, read_v2g_W=0.5, dram_bytes=4)
    c = a + b
    assert (c.mvms, c.read_v2g_W, c.sram_bytes, c.dram_bytes) == (5, 2.0, 10, 4)
    snap = c.copy()
    c.reset()
    assert c.mvms == 0 and isinstance(c.mvms, int) and c.read_v2g_W == 0.0
    assert snap.mvms == 5
    assert a.scaled(0.5).mvms == 1.0


def test_measured_blocks_nest_and_restore():
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.counters = OpCounts(mvms=5)

    net = Net()
    with measured(net) as outer:
        net.counters.mvms += 2
        with measured(net) as inner:
            net.counters.mvms += 3
        assert inner.counts.mvms == 3
    assert outer.counts.mvms == 5  # the inner block's work is seen by the enclosing block
    assert net.counters.mvms == 5  # and nothing leaks out of the outermost block


def test_measured_captures_a_crossbars_read_energy():
    """A crossbar sums its read energy on its device until its counters are read: measured() must
    see it inside the block and leave it out of the counters restored after the block."""
    from pathlib import Path

    import torch

    from analogff.crossbar import Crossbar

    xbar = Crossbar(16, 8, device=Path(__file__).resolve().parents[1] / "devices" / "ecram.toml", engine="torch")
    parent = torch.nn.Sequential(xbar)
    xbar.forward(torch.rand(4, 16))
    before = xbar.counters.read_v2g_W
    assert before > 0
    with measured(parent) as m:
        xbar.forward(torch.rand(4, 16))
    assert m.counts.read_v2g_W > 0 and m.counts.mvms == 4
    assert xbar.counters.read_v2g_W == before and xbar.counters.mvms == 4
