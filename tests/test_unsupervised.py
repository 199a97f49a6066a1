"""Tests of analogff.unsupervised: hybrid masks and negatives, the unsupervised FF net and its head."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analogff import accounting as cost
from analogff.energy import OpCounts
from analogff.ff import FFConfig
from analogff.locally_connected import LocalSpec
from analogff.train import train_ff
from analogff.unsupervised import UnsupervisedFFNet, hybrid_counts, hybrid_mask, hybrid_negatives
from ffhelpers import FakeCrossbar, assert_same_state, tiny_data


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cfg(**kw) -> FFConfig:
    return FFConfig(**{"lr": 1e-2, "head_lr": 1e-2, "cooldown": 0.0, **kw})


def neighbour_correlation(m: torch.Tensor, side: int, dist: int) -> float:
    """Correlation of pixels ``dist`` apart along rows, over all masks."""
    img = m.view(-1, side, side)
    a, b = img[:, :, :-dist].reshape(-1), img[:, :, dist:].reshape(-1)
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def mean_run_length(m: torch.Tensor, side: int) -> float:
    """Mean length of the runs of equal values along the rows."""
    img = m.view(-1, side, side)
    changes = (img[:, :, 1:] != img[:, :, :-1]).sum().item()
    rows = img.shape[0] * side
    return rows * side / (rows + changes)


# ----------------------------------------------------------------------------------- masks
def test_masks_are_binary_and_half_on():
    m = hybrid_mask(2000, 28, gen())
    assert m.shape == (2000, 784)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(m.mean()) - 0.5) < 0.02
    per_mask = m.mean(1)
    assert 0.3 < float(per_mask.median()) < 0.7  # most masks mix both images


def test_masks_have_long_range_structure():
    blurred, bits = hybrid_mask(500, 28, gen(1)), hybrid_mask(500, 28, gen(1), blurs=0)
    assert neighbour_correlation(blurred, 28, 3) > 0.25  # 6 blurs: ~0.32 at 3 pixels, ~0.08 at 5
    assert neighbour_correlation(blurred, 28, 5) > 0.04
    for dist in (1, 3, 5):
        assert abs(neighbour_correlation(bits, 28, dist)) < 0.02
    assert mean_run_length(bits, 28) < 2.2  # random bits: runs of ~2
    assert mean_run_length(blurred, 28) > 2.5 * mean_run_length(bits, 28)


def reference_mask(bits: np.ndarray, blurs: int) -> np.ndarray:
    """The paper's recipe written independently: [1/4, 1/2, 1/4] along rows then columns, edges
    repeated, ``blurs`` times; returns the blurred values (before the threshold)."""
    m = bits.astype(np.float64)
    for _ in range(blurs):
        p = np.pad(m, ((0, 0), (1, 1)), mode="edge")
        m = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
        p = np.pad(m, ((1, 1), (0, 0)), mode="edge")
        m = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return m


@pytest.mark.parametrize("blurs", [1, 6])
def test_mask_is_the_blurred_thresholded_bit_image(blurs):
    g = gen(7)
    state = g.get_state()
    m = hybrid_mask(20, 12, g, blurs=blurs)
    g.set_state(state)
    bits = (torch.rand(20, 1, 12, 12, generator=g) < 0.5).numpy()[:, 0]  # the same draws
    for i in range(20):
        ref = reference_mask(bits[i], blurs)
        clear = np.abs(ref - 0.5) > 1e-6  # values at exactly 0.5 may round either way
        assert np.array_equal((ref > 0.5)[clear], m[i].view(12, 12).numpy().astype(bool)[clear])


def test_masks_are_seeded():
    assert torch.equal(hybrid_mask(5, 28, gen(3)), hybrid_mask(5, 28, gen(3)))
    assert not torch.equal(hybrid_mask(5, 28, gen(3)), hybrid_mask(5, 28, gen(4)))


# ------------------------------------------------------------------------------- hybrids
def test_hybrids_mix_two_different_images_through_the_mask():
    x = torch.rand(16, 784)
    neg, m, partner = hybrid_negatives(x, gen(), return_parts=True)
    assert (partner != torch.arange(16)).all()
    on, off = m.bool(), ~m.bool()
    assert torch.equal(neg[on], x[on])
    assert torch.equal(neg[off], x[partner][off])
    for i in range(16):
        assert not torch.equal(neg[i], x[i]) and not torch.equal(neg[i], x[partner[i]])
    assert torch.equal(neg, hybrid_negatives(x, gen()))


def test_hybrids_of_colour_images_share_one_mask_per_image():
    x = torch.rand(4, 3 * 32 * 32)
    neg, m, partner = hybrid_negatives(x, gen(), side=32, return_parts=True)
    planes, src, other = neg.view(4, 3, 1024), x.view(4, 3, 1024), x[partner].view(4, 3, 1024)
    mm = m.view(4, 1, 1024).bool().expand(4, 3, 1024)
    assert torch.equal(planes[mm], src[mm]) and torch.equal(planes[~mm], other[~mm])


def test_hybrids_need_two_images():
    with pytest.raises(ValueError, match="batch_size >= 2"):
        hybrid_negatives(torch.rand(1, 784), gen())


# ------------------------------------------------------------------------------- the net
def layer_weights(net) -> list[torch.Tensor]:
    out = []
    for lay in net.layers:
        if hasattr(lay, "linear"):
            out += [lay.linear.weight.clone(), lay.linear.bias.clone()]
        elif hasattr(lay, "weight"):
            out += [lay.weight.detach().clone()]
        elif hasattr(lay, "tiles"):  # a fake crossbar's w, or a real one's weights read from its devices
            out += [t.xbar.w.clone() if hasattr(t.xbar, "w") else t.xbar.get_weights().clone() for t in lay.tiles]
        else:
            out.append(lay.xbar.w.clone())
    return out


def fake(r, c, s):
    return FakeCrossbar(r, c, s)


def make(kind: str, **kw) -> UnsupervisedFFNet:
    c = cfg(**kw)
    if kind == "dense":
        return UnsupervisedFFNet([784, 24, 24, 24], config=c)
    if kind == "analog":
        return UnsupervisedFFNet([784, 24, 24, 24], "analog", config=c, crossbar_factory=fake)
    # hinton_local's geometry with few channels (the full net is tested in test_local_net_dims_and_analog_tiles)
    return UnsupervisedFFNet(local=[LocalSpec(4, 10, 6, 8), LocalSpec(3, 2, 1, 12), LocalSpec(2, 2, 1, 16)], config=c)


@pytest.mark.parametrize("kind", ["dense", "analog", "local"])
def test_head_error_never_reaches_the_hidden_layers(kind):
    """Same seed, same data: a head that learns fast and one that does not learn leave the
    hidden layers bit for bit equal (the head's error would change them if it were pushed down)."""
    data = tiny_data()
    x, y = data["train"][0][:40], data["train"][1][:40]
    nets = [make(kind), make(kind)]
    for net, head_lr in zip(nets, (0.0, 0.05)):
        g = gen(5)
        for s in range(3):
            net.train_step(x[10 * s:10 * s + 20], y[10 * s:10 * s + 20], g, head_lr=head_lr)
    for a, b in zip(layer_weights(nets[0]), layer_weights(nets[1])):
        assert torch.equal(a, b)
    assert not torch.equal(nets[0].head.linear.weight, nets[1].head.linear.weight)


def test_labels_reach_only_the_head():
    x = tiny_data()["train"][0][:20]
    a, b = make("dense"), make("dense")
    a.train_step(x, torch.zeros(20, dtype=torch.long), gen(2))
    b.train_step(x, torch.arange(20) % 10, gen(2))
    for wa, wb in zip(layer_weights(a), layer_weights(b)):
        assert torch.equal(wa, wb)


def test_head_reads_the_normalised_layers_from_head_from():
    net = UnsupervisedFFNet([784, 8, 16, 32, 64], config=cfg())
    assert net.head_from == 1 and net.head.linear.weight.shape == (10, 16 + 32 + 64)
    net = UnsupervisedFFNet([784, 8, 16, 32, 64], config=cfg(), head_from=3)
    assert net.head.linear.weight.shape == (10, 64)
    net = UnsupervisedFFNet([784, 8], config=cfg())  # one layer: the head reads it
    assert net.head_from == 0
    x = torch.rand(5, 784)
    net = UnsupervisedFFNet([784, 8, 16, 32], config=cfg())
    hin = net.head_input(net.activities(x))
    assert not hin.requires_grad
    assert torch.allclose(hin[:, :16].pow(2).mean(1), torch.ones(5), atol=1e-4)  # length-normalised


def test_train_step_counts_every_digital_op():
    """A step's counts equal the sum of the primitives of what it did."""
    b, dims, k = 20, [784, 24, 16], 10
    net = UnsupervisedFFNet(dims, config=cfg())
    x, y = tiny_data()["train"][0][:b], tiny_data()["train"][1][:b]
    net.train_step(x, y, gen())
    want = hybrid_counts(b, 28, 1, 6)
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        want += cost.linear_forward(2 * b, n_in, n_out) + cost.relu(2 * b * n_out) + cost.ff_layer_loss(b, n_out)
        want += cost.length_norm(2 * b, n_out) if i + 1 < len(dims) - 1 else cost.length_norm(b, n_out)
        want += cost.digital_update(2 * b, n_in, n_out, "adam")
    want += cost.linear_forward(b, 16, k) + cost.head_loss(b, k) + cost.digital_update(b, 16, k, "adam")
    assert net.total_counts() == want


def test_hybrid_counts_by_hand():
    # one 2 x 2 mask, one blur pass, 1 channel: p = v = 4 pixels
    c = hybrid_counts(1, 2, 1, 1)
    assert c.digital_ops == 4 + 16 + 4 + 4 + 4  # bits, blur adds, threshold, 1 - m, the mix's add
    assert c.digital_mults == 24 + 8
    assert hybrid_counts(3, 28, 3, 6).digital_mults == 3 * (6 * 2 * 3 * 784 + 2 * 3 * 784)


def test_analog_net_counts_crossbar_work_and_no_backward():
    net = UnsupervisedFFNet([784, 16, 16], "analog", device="devices/ecram.toml", config=cfg(lr=1e-3))
    x, y = tiny_data()["train"][0][:10], tiny_data()["train"][1][:10]
    net.train_step(x, y, gen())
    c = net.total_counts()
    r = next(m.reads for m in net.modules() if hasattr(m, "xbar"))  # every layer read: this many array reads
    assert c.mvms == r * 2 * 10 * 2  # positive and negative rows, two layers
    assert c.adc_conversions == r * 2 * 10 * (16 + 16)
    assert c.backward_mvms == c.backward_adc_conversions == 0
    assert c.update_pulses > 0 and c.digital_macs > 0


@pytest.mark.parametrize("kind", ["dense", "analog", "local"])
def test_train_ff_drives_the_net(kind):
    data = tiny_data()
    net = make(kind)
    hist = train_ff(net, data, epochs=3, batch_size=50, progress=False)
    assert all(h["test_acc_goodness"] is None for h in hist)  # read by the head only
    assert hist[-1]["test_acc_softmax"] > 0.5  # chance: 0.1
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # FF learns real vs hybrid
    assert net.eval_counters.digital_ops > 0


def _local_analog() -> UnsupervisedFFNet:
    """hinton_local's geometry, few channels, on real ecram crossbars (the torch engine, seeded)."""
    root = Path(__file__).resolve().parents[1]
    return UnsupervisedFFNet(local=[LocalSpec(4, 10, 6, 4), LocalSpec(3, 2, 1, 6)], layer="analog",
                             device=str(root / "devices" / "ecram.toml"), config=cfg(lr=1e-3))


@pytest.mark.parametrize("kind", ["dense", "local_analog"])
def test_train_ff_resumes_exactly(tmp_path, kind):
    """An interrupted run resumed from its checkpoint ends with the weights (every tile's devices,
    for the analog local net: its crossbars' random streams travel in the checkpoint) and the
    counts of the run that was never interrupted."""
    data = tiny_data()
    build = _local_analog if kind == "local_analog" else (lambda: make("dense"))
    straight = build()
    train_ff(straight, data, epochs=2, batch_size=50, progress=False)
    ck = tmp_path / "ck.pt"
    first = build()
    def stop(m: dict) -> None:
        if m["epoch"] == 1:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        train_ff(first, data, epochs=2, batch_size=50, progress=False, checkpoint=ck, on_epoch=stop)
    second = build()
    hist = train_ff(second, data, epochs=2, batch_size=50, progress=False, checkpoint=ck, resume=True)
    assert len(hist) == 2
    assert_same_state(straight.state_dict(), second.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(layer_weights(straight), layer_weights(second)))
    assert straight.total_counts() == second.total_counts()


def test_interface_and_errors():
    net = make("dense")
    assert net.readouts == ("softmax",) and net.layer_kind == "digital" and net.dims == [784, 24, 24, 24]
    assert net.device == torch.device("cpu")
    x, y = tiny_data()["test"]
    assert 0.0 <= net.accuracy(x, y) <= 1.0
    with pytest.raises(ValueError, match="softmax"):
        net.accuracy(x, y, "goodness")
    with pytest.raises(ValueError, match="unknown local architecture"):
        UnsupervisedFFNet.from_architecture("lenet")
    with pytest.raises(ValueError, match="norm='length'"):
        UnsupervisedFFNet([784, 8], config=FFConfig(norm="batch"))
    with pytest.raises(ValueError, match="image_side"):
        UnsupervisedFFNet([700, 8])
    assert net.periphery_state_bytes == sum(lay.periphery_state_bytes for lay in net.layers) + \
        net.head.periphery_state_bytes
    state = net.optim_state()
    net.load_optim_state(state)
    assert set(state) == {"layer0", "layer1", "layer2", "head"}


def test_local_net_dims_and_analog_tiles():
    net = UnsupervisedFFNet.from_architecture("hinton_local", "analog", config=cfg(), crossbar_factory=fake)
    assert net.dims == [784, 2048, 1980, 2048]
    assert [len(lay.tiles) for lay in net.layers] == [16, 9, 4]
    assert net.head.linear.weight.shape == (10, 1980 + 2048)
    assert math.isclose(net.layers[1].tiles[0].input_gain, math.sqrt(512))
    c0 = OpCounts()
    assert net.counters == c0
