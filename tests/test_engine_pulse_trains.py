"""aihwkit's pulse trains (analogff.engine.pulse_trains): granularity, update management, expected pulses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from analogff.devices import load_device
from analogff.engine import TorchPulsedEngine, expected_pulses, pulse_trains, weight_granularity

DEVICES = Path(__file__).resolve().parents[1] / "devices"
IN, OUT, B = 64, 32, 16



@pytest.mark.parametrize("name", ["idealized", "reram_sb", "pcm"])
def test_pulse_counts_match_expected_pulses(name):
    """Over many updates the pulses the engine applies average to aihwkit's expected coincidences
    (PCM: the main pulse trains only, hence a small lr so that no refresh fires)."""
    cfg = load_device(DEVICES / f"{name}.toml").rpu_config()
    t = TorchPulsedEngine(IN, OUT, cfg, seed=0)
    t.set_weights(torch.zeros(OUT, IN))
    g = torch.Generator().manual_seed(1)
    lr = 0.002 if name == "pcm" else 0.01
    got = want = 0.0
    for _ in range(20):
        x = torch.rand(B, IN, generator=g)
        d = torch.rand(B, OUT, generator=g) * 2 - 1
        got += t.update(x, d, lr)
        want += float(expected_pulses(x, d, lr, cfg).sum())
    assert abs(got / want - 1) < 0.03, (got, want)


def test_weight_granularity_follows_the_cpp_models():
    es = load_device(DEVICES / "reram_es.toml").rpu_config().device
    # ExpStep: the down step at w = 0, dw_min (1 - up_down) (1 - A_down exp(-gamma_down b))
    want = es.dw_min * (1 - es.up_down) * (1 - es.A_down * math.exp(-es.gamma_down * es.b))
    assert weight_granularity(es) == pytest.approx(want, rel=1e-6)
    assert weight_granularity(load_device(DEVICES / "mp_reram_es.toml").rpu_config().device) == pytest.approx(want)
    pcm = load_device(DEVICES / "pcm.toml").rpu_config().device
    dev = pcm.unit_cell_devices[0]
    assert weight_granularity(pcm) == pytest.approx(dev.dw_min * (1 - dev.A_down))  # b = 0, up_down = 0
    assert weight_granularity(load_device(DEVICES / "ecram.toml").rpu_config().device) == 0.002


def test_pulse_trains_follow_update_management():
    cfg = load_device(DEVICES / "idealized.toml").rpu_config()
    gran = weight_granularity(cfg.device)
    x = torch.tensor([[1.0, 0.5, 0.0]])
    d = torch.tensor([[0.2, -0.1]])
    lr = 0.5 * gran * 31 / 0.2  # k = lr max|x| max|d| / gran = 15.5 -> BL 16
    t = pulse_trains(x, d, lr, cfg)
    assert int(t.bl) == 16
    assert float(t.p_x[0, 0] * t.p_d[0, 0]) == pytest.approx(15.5 / 16, rel=1e-6)  # UM: p = k / BL at the max
    assert float(expected_pulses(x, d, lr, cfg).sum()) == pytest.approx(lr * 1.5 * 0.3 / gran, rel=1e-6)
    # bit-line management switches update management on, as aihwkit's C++ does
    cfg.update.update_management = False
    assert torch.allclose(pulse_trains(x, d, lr, cfg).p_x, t.p_x)
    # neither: BL = desired_bl (fixed_bl), or ceil(lr / gran) with A = B = 1 when that is larger
    cfg.update.update_bl_management = False
    assert int(pulse_trains(x, d, lr, cfg).bl) == cfg.update.desired_bl
    cfg.update.fixed_bl = False
    big = 40 * gran * cfg.update.desired_bl
    t2 = pulse_trains(x, d, big, cfg)
    assert int(t2.bl) == math.ceil(big / gran) and float(t2.p_x[0, 0]) == 1.0
