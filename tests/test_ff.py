"""Forward-Forward: losses vs autograd, overlay, negatives, prediction, seeding, checkpoints,
analog update rules on a fake crossbar, NaN detection. Fast (seconds), synthetic data only."""

from __future__ import annotations

import math

import pytest
import torch

from analogff.energy import OpCounts
from analogff.ff import (
    AnalogLayer,
    _lr_factor,
    DigitalLayer,
    FFConfig,
    FFNet,
    ff_loss_and_error,
    goodness,
    hard_wrong_labels,
    hinton_loss,
    overlay_label,
    overlay_neutral,
    random_shift,
    random_wrong_labels,
    symba_loss,
    train_ff,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------- helpers
class FakeCrossbar:
    """A digital stand-in for analogff.crossbar.Crossbar: exact MVM and exact W <- W - lr d^T x."""

    def __init__(self, n_in, n_out, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = (torch.rand(n_out, n_in, generator=g) * 2 - 1) / math.sqrt(n_in)
        self.counters = OpCounts()
        self.calls = []

    def forward(self, x):
        self.counters.mvms += x.shape[0]
        return x @ self.w.t()

    def update(self, x, d, lr):
        self.calls.append((x.shape[0], lr))
        self.counters.updates += x.shape[0]
        self.w -= lr * d.t() @ x

    def update_rows(self, u, lr):
        self.calls.append((u.shape[1], lr))
        self.counters.updates += u.shape[1]
        self.w -= lr * u


def synthetic(n=300, dim=784, seed=0):
    """Ten well-separated classes: class k lights up its own block of pixels (away from the label)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, dim, generator=g) * 0.2
    block = (dim - 10) // 10
    for k in range(10):
        x[y == k, 10 + k * block:10 + (k + 1) * block] += 0.8
    return x.clamp(0, 1), y


def tiny_data():
    xtr, ytr = synthetic(1000, seed=0)
    xte, yte = synthetic(200, seed=1)
    return {"train": (xtr, ytr), "test": (xte, yte)}


def tiny_net(**cfg):
    return FFNet([784, 32, 32], config=FFConfig(**{"lr": 1e-2, "head_lr": 1e-2, "cooldown": 0.0, **cfg}))


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("loss", ["symba", "hinton"])
@pytest.mark.parametrize("kind", ["sum", "mean"])
def test_local_error_matches_autograd(loss, kind):
    cfg = FFConfig(loss=loss, goodness=kind, alpha=1.3, theta=1.7)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * 6, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    h = torch.relu(z)
    gp, gn = goodness(h[:6], kind), goodness(h[6:], kind)
    ref = symba_loss(gp, gn, cfg.alpha) if loss == "symba" else hinton_loss(gp, gn, cfg.theta)
    ref.backward()
    got_loss, d = ff_loss_and_error(h[:6].detach(), h[6:].detach(), cfg)
    assert torch.allclose(got_loss, ref.detach())
    assert torch.allclose(d, z.grad, atol=1e-12)


def test_loss_formulas():
    gp, gn = torch.tensor([3.0]), torch.tensor([1.0])
    assert math.isclose(float(symba_loss(gp, gn, 4.0)), math.log1p(math.exp(-8.0)), rel_tol=1e-6)
    expected = math.log1p(math.exp(-(3.0 - 2.0))) + math.log1p(math.exp(1.0 - 2.0))
    assert math.isclose(float(hinton_loss(gp, gn, 2.0)), expected, rel_tol=1e-6)


# ------------------------------------------------------------------------- overlay, negatives
def test_label_overlay():
    x = torch.rand(5, 784)
    y = torch.tensor([0, 3, 9, 3, 1])
    out = overlay_label(x, y, value=1.0)
    assert torch.equal(out[:, 10:], x[:, 10:])
    assert torch.equal(out[:, :10], torch.nn.functional.one_hot(y, 10).float())
    assert not torch.equal(out, x)  # x itself is untouched: a copy
    neutral = overlay_neutral(x, value=0.1)
    assert torch.allclose(neutral[:, :10], torch.full((5, 10), 0.1))
    assert torch.equal(neutral[:, 10:], x[:, 10:])


def test_random_negatives_never_true_and_cover_all_wrong_labels():
    y = torch.arange(10).repeat(50)
    for seed in range(50):
        neg = random_wrong_labels(y, torch.Generator().manual_seed(seed))
        assert (neg != y).all() and neg.min() >= 0 and neg.max() <= 9
    seen = {(int(a), int(b)) for a, b in zip(y, neg)}
    assert len(seen) > 60  # many (true, wrong) pairs reached


def test_hard_negatives_never_true_label():
    y = torch.arange(10).repeat(20)
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        probs = torch.softmax(torch.randn(len(y), 10, generator=g) * 3, 1)
        assert (hard_wrong_labels(probs, y, g) != y).all()
    certain = torch.nn.functional.one_hot(y, 10).float()  # all mass on the true label
    assert (hard_wrong_labels(certain, y, torch.Generator().manual_seed(0)) != y).all()


def test_hard_negatives_follow_probabilities():
    y = torch.zeros(4000, dtype=torch.long)
    probs = torch.full((4000, 10), 0.01)
    probs[:, 7] = 0.9  # the net thinks "7": hard negatives should mostly be 7
    neg = hard_wrong_labels(probs, y, torch.Generator().manual_seed(1))
    assert (neg == 7).float().mean() > 0.85


def test_random_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 784)
    x[:, 14 * 28 + 14] = 1.0  # one pixel in the centre survives any small shift
    out = random_shift(x, 2, g)
    assert out.shape == x.shape and torch.equal(out.sum(1), x.sum(1))
    assert torch.equal(random_shift(x, 0, g), x)


# ---------------------------------------------------------------------------------- prediction
def test_goodness_prediction_picks_highest_goodness_label():
    # One layer, unit j = label pixel j + pixel 10+j: goodness(label c) = const + 2 x[10+c] + 1,
    # so the predicted label is the one whose "evidence pixel" 10+c is brightest.
    net = FFNet([784, 10], config=FFConfig(goodness="sum", head=False, negatives="random"))
    w = torch.zeros(10, 784)
    w[torch.arange(10), torch.arange(10)] = 1.0
    w[torch.arange(10), 10 + torch.arange(10)] = 1.0
    net.layers[0].linear.weight.data.copy_(w)
    net.layers[0].linear.bias.data.zero_()
    x = torch.zeros(4, 784)
    evidence = torch.tensor([3, 0, 9, 5])
    x[torch.arange(4), 10 + evidence] = torch.tensor([0.5, 0.7, 0.2, 0.9])
    scores = net.goodness_per_label(x)
    assert torch.equal(net.predict(x, "goodness"), evidence)
    assert torch.equal(scores.argmax(1), evidence)
    for c in range(10):  # scores are the goodness with label c overlaid
        h = torch.relu(net.layers[0](overlay_label(x, torch.full((4,), c))))
        assert torch.allclose(scores[:, c], (h * h).sum(1))


def test_goodness_prediction_skips_first_layer_by_default():
    net = tiny_net()
    x = torch.rand(5, 784)
    hs = net.activities(overlay_label(x, torch.full((5,), 2)))
    assert torch.allclose(net.goodness_per_label(x)[:, 2], goodness(hs[1], net.config.goodness))
    net.config.goodness_from = 0
    both = goodness(hs[0], net.config.goodness) + goodness(hs[1], net.config.goodness)
    assert torch.allclose(net.goodness_per_label(x)[:, 2], both)


def test_head_and_layer_inputs_are_normalised():
    net = tiny_net()
    hs = net.activities(overlay_neutral(torch.rand(4, 784)))
    hin = net.head_input(hs)
    assert hin.shape == (4, 32)  # only layer 1 (not the first) feeds the head
    assert torch.allclose(hin.pow(2).mean(1), torch.ones(4), atol=1e-4)


# ----------------------------------------------------------------------------------- training
def test_learns_synthetic_task_and_counts_ops():
    net = tiny_net()
    hist = train_ff(net, tiny_data(), epochs=4, batch_size=50, seed=0, progress=False)
    assert hist[-1]["test_acc_goodness"] > 0.9 and hist[-1]["test_acc_softmax"] > 0.9
    assert {"train_loss", "test_acc_goodness", "test_acc_softmax", "wall_time_s"} <= hist[-1].keys()
    c = net.total_counts()
    assert c.digital_macs > 4 * 1000 * (784 * 32 + 32 * 32) and c.digital_ops > 0 and c.sram_bytes > 0
    assert c.mvms == 0 and c.update_pulses == 0


@pytest.mark.parametrize("opts", [dict(norm="batch", negatives="random"),
                                  dict(negatives="hard", hard_source="goodness", head=False),
                                  dict(goodness="mean", alpha=100.0)])
def test_other_options_learn(opts):
    net = tiny_net(**opts)
    hist = train_ff(net, tiny_data(), epochs=4, batch_size=50, seed=0, progress=False)
    assert hist[-1]["test_acc_goodness"] > 0.6


def test_hinton_loss_trains():
    net = tiny_net(loss="hinton", lr=1e-3, theta=10.0)
    hist = train_ff(net, tiny_data(), epochs=3, batch_size=50, seed=0, progress=False)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and hist[-1]["test_acc_softmax"] > 0.6


def test_cooldown_schedule():
    assert [_lr_factor(e, 10, 0.5) for e in range(10)] == [1, 1, 1, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert [_lr_factor(e, 4, 0.0) for e in range(4)] == [1, 1, 1, 1]
    net = tiny_net(cooldown=0.5)
    hist = train_ff(net, tiny_data(), epochs=4, batch_size=100, seed=0, progress=False, eval_goodness_every=4)
    assert [m["lr"] for m in hist] == pytest.approx([1e-2, 1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
    assert hist[0]["test_acc_goodness"] is None and hist[-1]["test_acc_goodness"] is not None


def test_same_seed_same_weights_different_seed_different():
    data = tiny_data()
    a, b, c = tiny_net(shift=1), tiny_net(shift=1), tiny_net(shift=1)
    ha = train_ff(a, data, epochs=2, batch_size=50, seed=3, progress=False)
    hb = train_ff(b, data, epochs=2, batch_size=50, seed=3, progress=False)
    train_ff(c, data, epochs=2, batch_size=50, seed=4, progress=False)
    assert_same_state(a.state_dict(), b.state_dict())
    assert [m["train_loss"] for m in ha] == [m["train_loss"] for m in hb]
    assert not torch.equal(a.layers[0].linear.weight, c.layers[0].linear.weight)


def test_checkpoint_roundtrip_and_resume_equals_uninterrupted(tmp_path):
    data = tiny_data()
    ref = tiny_net()
    ref_hist = train_ff(ref, data, epochs=3, batch_size=50, seed=5, progress=False)

    ck = tmp_path / "ff.pt"
    first = tiny_net()

    class Killed(Exception):
        pass

    def kill_after_epoch_2(m):
        if m["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_ff(first, data, epochs=3, batch_size=50, seed=5, progress=False, checkpoint=ck,
                 on_epoch=kill_after_epoch_2)
    # the run was "killed" after epoch 2 was checkpointed; only the final file remains
    assert ck.exists() and [p.name for p in tmp_path.iterdir()] == ["ff.pt"]
    resumed = tiny_net()
    hist = train_ff(resumed, data, epochs=3, batch_size=50, seed=5, progress=False, checkpoint=ck, resume=True)
    assert_same_state(resumed.state_dict(), ref.state_dict())
    keys = ("train_loss", "test_acc_goodness", "test_acc_softmax", "head_loss")
    assert [[m[k] for k in keys] for m in hist] == [[m[k] for k in keys] for m in ref_hist]
    assert resumed.counters == ref.counters
    # state_dict round trip into a fresh net
    fresh = tiny_net()
    fresh.load_state_dict(resumed.state_dict())
    x = data["test"][0]
    assert torch.equal(fresh.goodness_per_label(x), resumed.goodness_per_label(x))


@pytest.mark.parametrize("kind", ["digital", "analog"])
def test_training_counts_exclude_evaluation(kind):
    """train_ff's per-epoch test evaluation goes to net.eval_counters: the training counts (net's and
    the crossbars') are the same with or without a test set."""
    data = tiny_data()
    def make():
        if kind == "digital":
            return tiny_net()
        return FFNet([784, 32, 32], layer="analog", crossbar_factory=FakeCrossbar,
                     config=FFConfig(lr=2e-3, head_lr=1e-2, cooldown=0.0))
    with_test, without = make(), make()
    hist = train_ff(with_test, data, epochs=2, batch_size=50, seed=0, progress=False)
    train_ff(without, {"train": data["train"], "test": None}, epochs=2, batch_size=50, seed=0, progress=False)
    assert with_test.total_counts() == without.total_counts()
    assert without.eval_counters == OpCounts()
    assert with_test.eval_counters.digital_ops > 0 and hist[0]["eval_samples"] == 2 * 200
    if kind == "analog":  # the crossbars' MVMs of evaluation are evaluation too
        assert with_test.eval_counters.mvms == 2 * (10 * 200 + 200) * 2  # 2 epochs x (goodness + head) x 2 layers


def test_resume_keeps_evaluation_counts_apart(tmp_path):
    data = tiny_data()
    ref = tiny_net()
    train_ff(ref, data, epochs=2, batch_size=50, seed=0, progress=False)
    ck = tmp_path / "ff.pt"
    def stop(m):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ff(tiny_net(), data, epochs=2, batch_size=50, seed=0, progress=False, checkpoint=ck, on_epoch=stop)
    resumed = tiny_net()
    train_ff(resumed, data, epochs=2, batch_size=50, seed=0, progress=False, checkpoint=ck, resume=True)
    assert resumed.counters == ref.counters and resumed.eval_counters == ref.eval_counters


def test_resume_with_other_settings_refuses(tmp_path):
    ck = tmp_path / "ff.pt"
    train_ff(tiny_net(), tiny_data(), epochs=1, batch_size=50, seed=0, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="seed"):
        train_ff(tiny_net(), tiny_data(), epochs=1, batch_size=50, seed=1, progress=False, checkpoint=ck, resume=True)


def test_nan_loss_raises_clear_error():
    net = tiny_net()
    net.layers[1].linear.weight.data[0, 0] = float("inf")
    x, y = synthetic(20)
    with pytest.raises(FloatingPointError, match=r"layer 1 at epoch 7.*lower learning rate"):
        net.train_step(x, y, torch.Generator().manual_seed(0), epoch=7)


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


def test_config_validation():
    with pytest.raises(ValueError, match="loss"):
        FFConfig(loss="nope")
    with pytest.raises(ValueError, match="hard negatives"):
        FFConfig(head=False, negatives="hard", hard_source="head")


def test_digital_state_goes_to_dram_like_the_bp_reference_when_it_does_not_fit():
    from analogff.ff import FFConfig, FFNet

    small = FFNet([20, 16, 16], layer="digital", config=FFConfig())
    big = FFNet([784, 500, 500], layer="digital", config=FFConfig())  # 642k params x (w, g, m, v) > 1 MiB
    for net, n_in in ((small, 20), (big, 784)):
        x = torch.rand(4, n_in)
        net.layers[0](x)
        net.layers[0].apply_update(x, torch.rand(4, net.layers[0].linear.out_features), 1e-3)
    assert small.counters.dram_bytes == 0 and small.counters.sram_bytes > 0
    assert big.counters.dram_bytes > 0


@pytest.mark.parametrize("update", ["adam", "momentum", "sgd"])
def test_analog_periphery_state_goes_to_dram_by_the_same_rule(update):
    """The periphery's m (and v) follow the digital layers' memory rule: > 1 MiB lives in DRAM."""
    from analogff.ff import FFConfig, FFNet

    cfg = FFConfig(analog_update=update)
    small = FFNet([20, 16, 16], layer="analog", config=cfg, crossbar_factory=FakeCrossbar)
    big = FFNet([784, 500, 500], layer="analog", config=cfg, crossbar_factory=FakeCrossbar)  # m, v: 5 MB
    for net, n_in in ((small, 20), (big, 784)):
        x = torch.rand(4, n_in)
        net.layers[0].apply_update(x, torch.rand(4, net.layers[0].n_out), 1e-3)
    assert small.counters.dram_bytes == 0
    if update == "sgd":  # no state: nothing to store
        assert big.counters.dram_bytes == 0 and big.periphery_state_bytes < 1 << 20
    else:
        per_weight = {"adam": 4, "momentum": 2}[update] * 4  # state read and written, fp32
        assert big.counters.dram_bytes == per_weight * 500 * 785


def test_default_analog_recipe_learns_real_mnist_slice(monkeypatch):
    """The default analog rule (periphery Adam, row-by-row transfer) on the ecram crossbar learns a
    slice of real MNIST (50 steps of 100 images), with no backward ADC conversion."""
    from pathlib import Path

    from analogff.ff import FFConfig, FFNet, load_mnist_data, train_ff

    monkeypatch.setenv("ANALOGFF_COMPILE", "0")  # eager kernels: no compile time in the test
    data = load_mnist_data()
    (x, y), (xt, yt) = data["train"], data["test"]
    small = {"train": (x[:5000], y[:5000]), "test": (xt[:1000], yt[:1000])}
    ecram = Path(__file__).resolve().parents[1] / "devices" / "ecram.toml"
    net = FFNet([784, 200, 200], layer="analog", device=ecram, config=FFConfig())
    assert net.config.analog_update == "auto" and all(lay.update == "adam" for lay in net.layers)  # single device
    hist = train_ff(net, small, epochs=1, progress=False)
    assert hist[-1]["test_acc_softmax"] > 0.65, hist[-1]
    assert net.total_counts().update_pulses > 0 and net.total_counts().backward_adc_conversions == 0


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    """The FF checkpoint compares the whole FFConfig, the net's dims and layer kind, not only epochs/batch/seed."""
    ck = tmp_path / "ff.pt"
    train_ff(tiny_net(), tiny_data(), epochs=1, batch_size=50, seed=0, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match=r"config\.lr=0\.01, not 0\.02"):
        train_ff(tiny_net(lr=2e-2), tiny_data(), epochs=1, batch_size=50, seed=0, progress=False, checkpoint=ck,
                 resume=True)
    with pytest.raises(ValueError, match="dims"):
        other = FFNet([784, 32, 16], config=FFConfig(lr=1e-2, head_lr=1e-2, cooldown=0.0))
        train_ff(other, tiny_data(), epochs=1, batch_size=50, seed=0, progress=False, checkpoint=ck, resume=True)
    hist = train_ff(tiny_net(), tiny_data(), epochs=1, batch_size=50, seed=0, progress=False, checkpoint=ck, resume=True)
    assert len(hist) == 1  # the same settings resume (here: nothing left to train)


def test_auto_rule_and_onarray_errors(tmp_path):
    """auto picks onarray on a transfer compound and adam elsewhere; onarray on a single device and a
    periphery rule on a transfer compound are one-line errors naming the profile and its preset."""
    from pathlib import Path

    from analogff.ff import AnalogLayer

    devices = Path(__file__).resolve().parents[1] / "devices"
    assert AnalogLayer(16, 8, device=devices / "ecram_cttv2.toml").update == "onarray"
    assert AnalogLayer(16, 8, device=devices / "ecram.toml").update == "adam"
    with pytest.raises(ValueError, match=r"'onarray' needs a transfer-compound preset.*'ecram'.*EcRamPreset"):
        AnalogLayer(16, 8, device=devices / "ecram.toml", update="onarray")
    with pytest.raises(ValueError, match=r"'adam' writes the weights row by row.*'ecram_agad'.*AGADEcRamPreset"):
        AnalogLayer(16, 8, device=devices / "ecram_agad.toml", update="adam")
