"""Tests of analogff.reference: op counts by hand, determinism, and that training learns."""

from __future__ import annotations

import pytest
import torch

from analogff.accounting import OPTIMIZERS
from analogff.energy import EnergyModel, OpCounts
from analogff.reference import (
    SOFTMAX_CE_OPS_PER_CLASS,
    BPNet,
    evaluate,
    train_bp,
)

torch.set_num_threads(1)


def synthetic(n: int = 600, d: int = 20, classes: int = 4, seed: int = 0):
    """Deterministic Gaussian blobs: class c centred at a fixed random mean (same for every ``seed``),
    unit noise; ``seed`` draws the samples, so different seeds give train and test sets."""
    means = 2.0 * torch.randn(classes, d, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = means[y] + torch.randn(n, d, generator=g)
    return x, y


def test_mac_counts_match_hand_formula():
    net = BPNet([6, 5, 4, 3], seed=0)
    B = 7
    fwd = 6 * 5 + 5 * 4 + 4 * 3  # 62
    assert net.forward_macs(B) == B * fwd
    # weight gradients of all layers + input gradients of layers 2 and 3 (not of the input)
    assert net.backward_macs(B) == B * (fwd + 5 * 4 + 4 * 3)
    c = net.train_step_counts(B)
    assert c.digital_macs == B * (2 * fwd + 5 * 4 + 4 * 3)
    # ~3x forward for training (exactly 3x minus the first layer's input gradient)
    assert c.digital_macs == 3 * B * fwd - B * 6 * 5
    # element-wise ops: forward (bias + ReLU + softmax-CE), backward (loss grad + ReLU mask + bias grad),
    # Adam (10 per parameter)
    outs, hidden = 5 + 4 + 3, 5 + 4
    params = 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3
    assert net.n_params == params
    # (the softmax cross-entropy's exp and log are special ops, the other 3 of its 5 ops adds/compares)
    want_ops = B * (outs + hidden + (SOFTMAX_CE_OPS_PER_CLASS - 2) * 3) + B * (3 + hidden + outs) \
        + OPTIMIZERS["adam"].adds_per_param * params
    assert c.digital_ops == want_ops
    assert c.digital_special_ops == B * 2 * 3 + 2 * params and c.digital_mults == 7 * params  # Adam: root, divide
    inf = net.inference_counts(10)
    assert inf.digital_macs == 10 * fwd
    assert inf.digital_ops == 10 * (outs + hidden + 3)
    assert inf.backward_mvms == 0 and inf.adc_conversions == 0


def test_counters_accumulate_during_training_and_evaluation():
    x, y = synthetic(n=100, d=6, classes=3)
    net = BPNet([6, 5, 3], seed=1)
    train_bp(net, x, y, x[:30], y[:30], epochs=2, batch_size=32, lr=1e-2, seed=0)
    # 100 samples per epoch in batches 32, 32, 32, 4
    per_epoch = sum((net.train_step_counts(b) for b in (32, 32, 32, 4)), OpCounts())
    assert net.counters == per_epoch + per_epoch
    assert net.counters.digital_macs == 2 * (net.forward_macs(100) + net.backward_macs(100))
    assert net.counters == net.training_counts(100, 32).scaled(2)
    assert net.eval_counters.digital_macs == 2 * net.forward_macs(30)
    assert net.eval_counters == net.inference_counts(30).scaled(2)


def test_training_counts_of_bp_exclude_evaluation():
    """BPNet.eval_counters holds the per-epoch evaluation; energy.total_counts (the training bill
    that experiment.run_one prices) does not include it."""
    from analogff.energy import total_counts

    x, y = synthetic(n=100, d=6, classes=3)
    net = BPNet([6, 5, 3], seed=1)
    hist = train_bp(net, x, y, x[:30], y[:30], epochs=2, batch_size=32, lr=1e-2, seed=0)
    assert total_counts(net) == net.training_counts(100, 32).scaled(2)
    assert net.eval_counters == net.inference_counts(30).scaled(2)
    assert [h["eval_samples"] for h in hist] == [30, 30]


def test_memory_model_and_peak_memory():
    small = BPNet([6, 5, 3], seed=0)  # fits in 1 MiB: all traffic on chip
    pm = small.peak_memory(batch_size=8)
    p = small.n_params
    assert pm["weights_bytes"] == 4 * p and pm["gradients_bytes"] == 4 * p
    assert pm["optimizer_state_bytes"] == 2 * 4 * p  # Adam: m and v
    assert pm["activations_bytes"] == 8 * 4 * (6 + 5 + 5 + 3)  # layer inputs, hidden pre-acts, outputs
    assert pm["state_in_sram"]
    c = small.train_step_counts(8)
    assert c.dram_bytes == 0 and c.sram_bytes > 0
    # resident traffic: W fwd (p) + W bwd for layer 2 (5*3+3) + W update r/w (2p) + grads w/r (2p) + Adam r/w (4p)
    resident = 4 * (p + (5 * 3 + 3) + 2 * p + 2 * p + 4 * p)
    act = 8 * 2 * 4 * ((6 + 5 + 5 + 3) + (3 + 5))
    assert c.sram_bytes == resident + act

    big = BPNet([784, 500, 500, 10], seed=0)  # 0.64 M params = 2.6 MB: weights stream from DRAM
    pm_big = big.peak_memory(batch_size=64)
    assert not pm_big["state_in_sram"] and not pm_big["inference_weights_in_sram"]
    cb = big.train_step_counts(64)
    pb = big.n_params
    w_bwd = 500 * 500 + 500 + 500 * 10 + 10
    assert cb.dram_bytes == 4 * (pb + w_bwd + 2 * pb + 2 * pb + 4 * pb)
    assert cb.sram_bytes == 64 * 2 * 4 * ((784 + 500 + 500 + 500 + 500 + 10) + (10 + 500 + 500))
    assert big.inference_counts(64, batch_size=64).dram_bytes == 4 * big.n_params
    sgd = BPNet([6, 5, 3], seed=0, optimizer="sgd", momentum=0.0)
    assert sgd.peak_memory(8)["optimizer_state_bytes"] == 0


def test_same_seed_gives_identical_results_and_different_seed_differs():
    x, y = synthetic()
    xt, yt = synthetic(n=200, seed=1)

    def run(net_seed, data_seed):
        net = BPNet([20, 16, 4], seed=net_seed)
        hist = train_bp(net, x, y, xt, yt, epochs=2, batch_size=50, lr=1e-2, seed=data_seed)
        return hist, [p.detach().clone() for p in net.parameters()]

    h1, p1 = run(3, 4)
    h2, p2 = run(3, 4)
    assert h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    h3, _ = run(5, 4)
    assert h3[0]["train_loss"] != h1[0]["train_loss"]


def test_training_reduces_loss_and_learns_synthetic_task():
    x, y = synthetic()
    xt, yt = synthetic(n=200, seed=1)
    net = BPNet([20, 32, 4], seed=0)
    before = evaluate(net, x, y, count=False)
    seen = []
    hist = train_bp(net, x, y, xt, yt, epochs=5, batch_size=32, lr=1e-2, seed=0, on_epoch=seen.append)
    after = evaluate(net, x, y, count=False)
    assert len(hist) == 5 and seen == hist
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert after["loss"] < 0.5 * before["loss"]
    assert after["acc"] > 0.9 and hist[-1]["test_acc"] > 0.9
    assert hist[-1]["test_loss"] < hist[0]["train_loss"]
    assert train_bp(BPNet([20, 4], seed=0), x, y, epochs=1)[0]["test_acc"] is None
    # the counts feed the energy model
    report = EnergyModel().energy(net.counters).per_sample(hist[-1]["samples_seen"])
    assert report.breakdown_J["digital_mac"] > 0 and report.breakdown_J["backward_adc"] == 0


def test_sgd_variant_and_bad_arguments():
    x, y = synthetic(n=120)
    net = BPNet([20, 8, 4], seed=0, optimizer="sgd", momentum=0.9)
    hist = train_bp(net, x, y, epochs=3, batch_size=20, lr=0.05, seed=0)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert net.train_step_counts(20).digital_ops == net.train_step_counts(20).digital_ops  # pure
    with pytest.raises(ValueError):
        BPNet([10], seed=0)
    with pytest.raises(ValueError):
        BPNet([4, 2], seed=0, optimizer="rmsprop")
    with pytest.raises(ValueError):
        train_bp(net, x, y[:-1], epochs=1)


def test_nan_loss_in_bp_stops_naming_the_epoch_and_keeps_the_last_good_weights():
    x, y = synthetic(n=100, d=6, classes=3)
    net = BPNet([6, 5, 3], seed=1)
    train_bp(net, x, y, epochs=1, batch_size=50, lr=1e-2)
    good = {k: v.clone() for k, v in net.state_dict().items()}
    counts = net.counters.copy()
    x_bad = x.clone()
    x_bad[60] = float("nan")  # one mini-batch of 100 holds it
    with pytest.raises(FloatingPointError, match=r"digital BP loss is nan in epoch 1 .*last good"):
        train_bp(net, x_bad, y, epochs=1, batch_size=100, lr=1e-2)
    assert all(torch.equal(v, good[k]) for k, v in net.state_dict().items())
    assert net.counters == counts  # the failed step is not billed
