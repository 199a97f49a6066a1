"""The FF training loop (analogff.train): learning, seeding, cooldown, checkpoints and exact resume,
evaluation counted apart from training, NaN detection. Synthetic data except one real-MNIST slice."""

from __future__ import annotations

import pytest
import torch

from analogff.energy import OpCounts
from analogff.ff import FFConfig, FFNet
from analogff.train import _lr_factor, train_ff
from ffhelpers import FakeCrossbar, assert_same_state, synthetic, tiny_data, tiny_net

torch.set_num_threads(1)


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
        # per epoch: goodness (label_readout="differential"): layer 0 reads the 200 images once and each
        # of the 10 label rows 32 times; layer 1 the trials' mean and the 10 differences per image;
        # then the head's neutral pass through both layers
        reads = with_test.layers[0].reads  # each read of a layer: this many array reads
        assert with_test.eval_counters.mvms == 2 * reads * ((200 + 10 * 32) + (200 + 10 * 200) + 2 * 200)


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


def test_default_analog_recipe_learns_real_mnist_slice(monkeypatch):
    """The default analog rule (periphery Adam, row-by-row transfer) on the ecram crossbar learns a
    slice of real MNIST (50 steps of 100 images), with no backward ADC conversion."""
    from pathlib import Path

    from analogff.train import load_mnist_data

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


def test_evaluation_does_not_change_how_an_analog_net_trains():
    """The crossbars read evaluation passes with their own random stream: a run evaluated every
    epoch trains exactly like one never evaluated (the same weights, bit for bit)."""
    from pathlib import Path

    ecram = Path(__file__).resolve().parents[1] / "devices" / "ecram.toml"
    data = tiny_data()
    nets = [FFNet([784, 16, 16], layer="analog", device=ecram, config=FFConfig(lr=1e-2, head_lr=1e-2, cooldown=0.0))
            for _ in range(2)]
    train_ff(nets[0], data, epochs=2, batch_size=100, seed=0, progress=False)
    train_ff(nets[1], {"train": data["train"], "test": None}, epochs=2, batch_size=100, seed=0, progress=False)
    for a, b in zip(nets[0].layers, nets[1].layers):
        assert torch.equal(a.xbar.get_weights(), b.xbar.get_weights())
