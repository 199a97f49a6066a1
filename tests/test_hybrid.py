"""Hybrid schedules (FF then BP, BP then FF): the weights cross exactly, both phases train and are
counted, the main job runs them and refuses what they cannot do."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from analogff.counts import total_counts
from analogff.data import load_mnist
from analogff.experiment import ConfigError, ExperimentConfig, run_one
from analogff.ff import FFConfig, FFNet
from analogff.hybrid import HybridNet, copy_bp_to_ff, copy_ff_to_bp, phase_epochs, train_hybrid
from analogff.reference import BPNet


@pytest.fixture(scope="module")
def data():
    (x, y), (xt, yt) = load_mnist("train"), load_mnist("test")
    t = torch.as_tensor
    return {"train": (t(x[:400]), t(y[:400])), "test": (t(xt[:200]), t(yt[:200]))}


def _nets(seed_ff: int = 0, seed_bp: int = 1):
    cfg = FFConfig(seed=seed_ff, head=True)
    return FFNet([784, 24, 16], config=cfg), BPNet([784, 24, 16, 10], seed=seed_bp)


def test_copies_move_exactly_the_hidden_weights():
    ff, bp = _nets()
    out_w = bp.layers[-1].weight.clone()
    copy_ff_to_bp(ff, bp)
    x = torch.rand(5, 784)
    assert torch.equal(bp.layers[0](x), ff.layers[0].linear(x))  # same first pre-activation
    for a, b in zip(ff.layers, bp.layers):
        assert torch.equal(a.linear.weight, b.weight) and torch.equal(a.linear.bias, b.bias)
    assert torch.equal(bp.layers[-1].weight, out_w)  # the output layer keeps its own init

    ff2, bp2 = _nets(seed_ff=3, seed_bp=4)
    ff2.layers[0].opt.state[ff2.layers[0].linear.weight] = {"step": torch.tensor(5.0)}
    copy_bp_to_ff(bp2, ff2)
    for a, b in zip(ff2.layers, bp2.layers):
        assert torch.equal(a.linear.weight, b.weight) and torch.equal(a.linear.bias, b.bias)
    assert not ff2.layers[0].opt.state  # a new initialisation: no stale Adam moments


def test_mismatched_widths_refused():
    ff = FFNet([784, 24, 16])
    with pytest.raises(ValueError, match="must match"):
        copy_ff_to_bp(ff, BPNet([784, 24, 12, 10]))


def test_phase_epochs():
    assert phase_epochs(2, 0.5) == (1, 1)
    assert phase_epochs(10, 0.3) == (3, 7)
    assert phase_epochs(3, 0.01) == (1, 2) and phase_epochs(3, 0.99) == (2, 1)  # one epoch each at least


@pytest.mark.parametrize("name", ["ff_then_bp", "bp_then_ff"])
def test_both_phases_train_and_are_counted(data, name):
    ff, bp = _nets()
    before_ff = [layer.linear.weight.clone() for layer in ff.layers]
    before_bp = [layer.weight.clone() for layer in bp.layers]
    nets, extra = train_hybrid(name, ff, bp, data, epochs=3, split=0.34, batch_size=50, predict="goodness")
    assert isinstance(nets, HybridNet)
    assert [h["phase"] for h in extra["history"]] == (
        ["digital_ff", "digital_bp", "digital_bp"] if name == "ff_then_bp" else ["digital_bp", "digital_ff", "digital_ff"])
    assert [h["epoch"] for h in extra["history"]] == [1, 2, 3]
    # both nets changed, the second one starting from the first one's weights
    assert all(not torch.equal(a, lay.linear.weight) for a, lay in zip(before_ff, ff.layers))
    assert all(not torch.equal(a, lay.weight) for a, lay in zip(before_bp, bp.layers))
    # the bill is the sum of both phases' training, and each phase did real work
    total = total_counts(nets)
    assert total.digital_macs == ff.counters.digital_macs + bp.counters.digital_macs
    assert ff.counters.digital_macs > 0 and bp.counters.digital_macs > 0
    per_bp_epoch = bp.train_step_counts(50).digital_macs * (400 // 50)
    assert bp.counters.digital_macs == per_bp_epoch * (2 if name == "ff_then_bp" else 1)
    assert 0 <= extra["accuracy_at_switch"] <= 1 and 0 <= extra["test_accuracy"] <= 1
    assert nets.eval_counters.digital_macs > 0  # evaluation, the switch's included, is counted apart
    assert extra["phases"][1]["accuracy_at_switch"] == extra["accuracy_at_switch"]
    # every evaluation's samples are in the history (the main job prices evaluation per sample):
    # FF evaluates goodness and head, BP its logits, once per epoch; the switch once more
    ff_epochs = 1 if name == "ff_then_bp" else 2
    assert sum(h["eval_samples"] for h in extra["history"]) == 200 * (2 * ff_epochs + (3 - ff_epochs) + 1)
    walls = [h["wall_time_s"] for h in extra["history"]]
    assert walls == sorted(walls) and walls[0] > 0  # one clock through both phases


def test_bp_then_ff_switch_accuracy_is_the_copied_weights(data):
    """Right after the switch FF reads BP's weights: the switch accuracy equals the FF net's
    accuracy on those weights, evaluated separately."""
    ff, bp = _nets()
    _, extra = train_hybrid("bp_then_ff", ff, bp, data, epochs=2, batch_size=50, predict="softmax")
    ff_ref, bp_ref = _nets()
    from analogff.reference import train_bp

    train_bp(bp_ref, *data["train"], *data["test"], epochs=1, batch_size=50, lr=1e-3, seed=0)
    copy_bp_to_ff(bp_ref, ff_ref)
    assert ff_ref.accuracy(*data["test"], "softmax") == extra["accuracy_at_switch"]


def test_main_job_runs_a_hybrid_method(tmp_path):
    cfg = ExperimentConfig(hidden=[24], epochs=2, train_limit=300, test_limit=100, methods=["ff_then_bp"],
                           probe_samples=0, drift_times=[], out=str(tmp_path / "h"))
    res = run_one(cfg)
    m = res["methods"]["ff_then_bp"]
    assert [p["method"] for p in m["phases"]] == ["digital_ff", "digital_bp"]
    assert m["train_energy_per_sample_J"] > 0 and len(m["epochs"]) == 2
    assert json.loads((tmp_path / "h" / "results.json").read_text())["config"]["hybrid_split"] == 0.5


@pytest.mark.parametrize("change, field", [
    (dict(epochs=1), "epochs"),
    (dict(variant="unsupervised"), "variant"),
    (dict(hybrid_split=1.0), "hybrid_split"),
    (dict(hybrid_split=0.0), "hybrid_split"),
])
def test_hybrid_config_errors(change, field):
    cfg = replace(ExperimentConfig(methods=["bp_then_ff"]), **change)
    with pytest.raises(ConfigError, match=field):
        cfg.validate()
