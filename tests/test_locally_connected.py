"""Tests of analogff.locally_connected: windows, connectivity, digital/analog agreement, counts."""

from __future__ import annotations

import math

import pytest
import torch

from analogff.locally_connected import (LOCAL_ARCHITECTURES, LocalAnalogLayer, LocalDigitalLayer, LocalSpec,
                                        local_windows)
from ffhelpers import FakeCrossbar

HINTON = LOCAL_ARCHITECTURES["hinton_local"]


def described_windows() -> list[list[list[int]]]:
    """The paper's windows written out independently: per layer, per location (row-major), the
    sorted input indices."""
    out = []
    layer1 = []
    for gy in range(4):
        for gx in range(4):
            layer1.append(sorted(28 * r + c for r in range(6 * gy, 6 * gy + 10) for c in range(6 * gx, 6 * gx + 10)))
    out.append(layer1)
    for below_grid, below_ch, grid in ((4, 128, 3), (3, 220, 2)):
        layer = []
        for gy in range(grid):
            for gx in range(grid):
                layer.append(sorted((py * below_grid + px) * below_ch + c
                                    for py in (gy, gy + 1) for px in (gx, gx + 1) for c in range(below_ch)))
        out.append(layer)
    return out


SHAPES = [(28, 28, 1), (4, 4, 128), (3, 3, 220)]


def test_hinton_local_is_the_papers_architecture():
    got = [(s.grid, s.field, s.stride, s.channels) for s in HINTON]
    assert got == [(4, 10, 6, 128), (3, 2, 1, 220), (2, 2, 1, 512)]
    sizes = [s.grid ** 2 * s.channels for s in HINTON]
    assert sizes == [2048, 1980, 2048]  # "approximately 2000 hidden units per layer"


@pytest.mark.parametrize("i", [0, 1, 2])
def test_windows_are_the_described_ones(i):
    got = local_windows(SHAPES[i], HINTON[i])
    want = described_windows()[i]
    assert got.shape == (len(want), len(want[0]))
    assert [sorted(w.tolist()) for w in got] == want


@pytest.mark.parametrize("kind", ["digital", "analog"])
@pytest.mark.parametrize("i", [0, 1, 2])
def test_each_location_connects_exactly_its_window(kind, i):
    """Drive one input at a time: location l's outputs move iff the input is in l's window."""
    spec, shape = HINTON[i], SHAPES[i]
    if kind == "digital":
        lay = LocalDigitalLayer(shape, spec, generator=torch.Generator().manual_seed(i))
    else:
        lay = LocalAnalogLayer(shape, spec, update="sgd", crossbar_factory=lambda r, c, s: FakeCrossbar(r, c, s))
    n_in = math.prod(shape)
    with torch.no_grad():
        z0 = lay(torch.zeros(1, n_in))
        dz = (lay(torch.eye(n_in)) - z0).abs().view(n_in, spec.grid ** 2, spec.channels)
    connected = dz.amax(2) > 0  # (n_in, L)
    want = torch.zeros_like(connected)
    for l, win in enumerate(described_windows()[i]):
        want[win, l] = True
    assert torch.equal(connected, want)


def test_layers_stack_into_the_next_grid():
    x = torch.rand(3, 784)
    h = x
    for spec, shape in zip(HINTON, SHAPES):
        lay = LocalDigitalLayer(shape, spec)
        h = torch.relu(lay(h))
        assert lay.out_shape == (spec.grid, spec.grid, spec.channels) and h.shape == (3, lay.n_out)


def test_chw_layout_for_colour_planes():
    spec = LocalSpec(grid=2, field=3, stride=4, channels=5)
    win = local_windows((8, 8, 3), spec, layout="chw")
    # location (1, 0): rows 4..6, cols 0..2 of every plane: index c*64 + y*8 + x
    want = sorted(c * 64 + y * 8 + x for c in range(3) for y in range(4, 7) for x in range(3))
    assert sorted(win[2].tolist()) == want


def test_fields_that_do_not_fit_raise():
    with pytest.raises(ValueError, match="reaches 29"):
        local_windows((28, 28, 1), LocalSpec(grid=4, field=11, stride=6, channels=2))


def test_digital_forward_and_update_are_per_location_linear_layers():
    spec, shape = LocalSpec(grid=2, field=3, stride=2, channels=4), (5, 5, 2)
    lay = LocalDigitalLayer(shape, spec, optimizer="sgd", generator=torch.Generator().manual_seed(0))
    x, d = torch.randn(6, 50), torch.randn(6, 16)
    win = lay.windows
    w0, b0 = lay.weight.detach().clone(), lay.bias.detach().clone()
    with torch.no_grad():
        z = lay(x)
        for l in range(4):
            assert torch.allclose(z[:, 4 * l:4 * l + 4], x[:, win[l]] @ w0[l].t() + b0[l], atol=1e-6)
        lay.apply_update(x, d, 0.1)
        for l in range(4):
            dl = d[:, 4 * l:4 * l + 4]
            assert torch.allclose(lay.weight[l], w0[l] - 0.1 * dl.t() @ x[:, win[l]], atol=1e-6)
            assert torch.allclose(lay.bias[l], b0[l] - 0.1 * dl.sum(0), atol=1e-6)


def test_analog_layer_is_one_tile_per_location_with_only_the_used_cells():
    spec, shape = LocalSpec(grid=2, field=3, stride=2, channels=4), (5, 5, 2)
    made = []

    def factory(r, c, s):
        made.append((r, c, s))
        return FakeCrossbar(r, c, s)

    lay = LocalAnalogLayer(shape, spec, update="sgd", seed=100, crossbar_factory=factory)
    assert made == [(3 * 3 * 2 + 1, 4, 100 + l) for l in range(4)]  # window + bias row, own seed each
    assert lay.n_cells == 4 * 19 * 4 < (50 + 1) * 16
    x, d = torch.randn(3, 50), torch.randn(3, 16)
    with torch.no_grad():
        z = lay(x)
        for l, tile in enumerate(lay.tiles):
            rows = torch.cat([x[:, lay.windows[l]], torch.ones(3, 1)], 1)
            assert torch.allclose(z[:, 4 * l:4 * l + 4], rows @ tile.xbar.w.t(), atol=1e-6)
        w0 = [t.xbar.w.clone() for t in lay.tiles]
        lay.apply_update(x, d, 0.5)
        for l, tile in enumerate(lay.tiles):
            rows = torch.cat([x[:, lay.windows[l]], torch.ones(3, 1)], 1)
            assert torch.allclose(tile.xbar.w, w0[l] - 0.5 * d[:, 4 * l:4 * l + 4].t() @ rows, atol=1e-6)


def test_analog_counts_are_those_of_the_used_cells_and_no_backward(tmp_path):
    """Real crossbars: MVMs, DAC/ADC conversions and reads summed over the per-location tiles."""
    from analogff.counts import total_counts

    spec, shape = LocalSpec(grid=2, field=3, stride=2, channels=4), (5, 5, 1)
    lay = LocalAnalogLayer(shape, spec, device="devices/ecram.toml", update="sgd", seed=3)
    b, rows, cols, L = 8, 3 * 3 + 1, 4, 4
    x = torch.rand(b, 25) * 0.5
    with torch.no_grad():
        lay(x)
        c = total_counts(lay)
        assert c.mvms == b * L
        assert c.dac_conversions == b * L * rows
        assert c.adc_conversions == b * L * cols
        assert c.device_reads == 2 * b * L * rows * cols
        lay.apply_update(x, torch.randn(b, L * cols) * 1e-2, 0.1)
    c = total_counts(lay)
    assert c.backward_mvms == c.backward_dac_conversions == c.backward_adc_conversions == 0
    assert c.updates == b * L  # one rank-B pulsed update per tile


def test_digital_counts_are_per_location_macs():
    from analogff import accounting as cost

    spec, shape = LocalSpec(grid=2, field=3, stride=2, channels=4), (5, 5, 2)
    lay = LocalDigitalLayer(shape, spec)
    with torch.no_grad():
        lay(torch.rand(7, 50))
    assert lay.counters.digital_macs == 7 * 4 * 18 * 4
    assert lay.counters == cost.linear_forward(7, 18, 4).scaled(4)
