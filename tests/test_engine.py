"""The engine (analogff.engine.TorchPulsedEngine, analogff.engine.cells): seeding, state, refusals,
compiled kernels, the mixed-precision transfer and the PCM refresh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from analogff.crossbar import Crossbar
from analogff.devices import DeviceProfile, PhysicalParams, load_device
from analogff.engine import TorchPulsedEngine, weight_granularity

DEVICES = Path(__file__).resolve().parents[1] / "devices"
IN, OUT, B = 64, 32, 16



def test_same_seed_same_weights_and_outputs():
    cfg = load_device(DEVICES / "reram_es.toml").rpu_config

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = TorchPulsedEngine(IN, OUT, cfg(), seed=seed)
        t.set_weights(torch.full((OUT, IN), 0.1))
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            t.update(torch.rand(B, IN, generator=g), torch.rand(B, OUT, generator=g) - 0.5, 0.02)
        return t.get_weights(), t.forward(torch.rand(4, IN, generator=g))

    w1, y1 = run(5)
    w2, y2 = run(5)
    w3, _ = run(6)
    assert torch.equal(w1, w2) and torch.equal(y1, y2)
    assert not torch.equal(w1, w3)
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    run(5)  # the engine never touches the global RNG
    assert torch.equal(before, torch.rand(3))


@pytest.mark.parametrize("name", ["pcm", "mp_reram_es", "capacitor"])
def test_state_round_trip_continues_identically(name):
    cfg = load_device(DEVICES / f"{name}.toml").rpu_config
    a = TorchPulsedEngine(IN, OUT, cfg(), seed=0)
    a.set_weights(torch.full((OUT, IN), 0.2))
    g = torch.Generator().manual_seed(0)
    x, d = torch.rand(B, IN, generator=g), torch.rand(B, OUT, generator=g) - 0.5
    a.update(x, d, 0.05)
    b = TorchPulsedEngine(IN, OUT, cfg(), seed=9)
    b.load_state(a.state())
    assert torch.equal(a.get_weights(), b.get_weights())
    for e in (a, b):
        e.update(x, d, 0.05)
        e.update(x, d, 0.05)
    assert torch.equal(a.get_weights(), b.get_weights())
    assert torch.equal(a.forward(x), b.forward(x))


# (presets that stay refused; the transfer compounds are the transfer cell's, analogff/engine/cells/transfer.py)
@pytest.mark.parametrize("preset", ["EcRam2Preset", "MixedPrecisionPCMPreset", "ReRamES2Preset",
                                    "FloatingPointPreset"])
def test_unsupported_presets_are_refused_clearly(preset):
    from analogff.devices import PRESETS

    with pytest.raises(ValueError, match=rf"{preset}.*engine='aihwkit'"):
        TorchPulsedEngine(8, 4, PRESETS[preset](), seed=0)
    profile = DeviceProfile(name="tt", preset=preset, physics=PhysicalParams(0.2, 1e-6, 25e-6, 1e-7, 1e-12))
    with pytest.raises(ValueError, match="engine='aihwkit'"):
        Crossbar(8, 4, device=profile, engine="torch")
    Crossbar(8, 4, device=profile, engine="aihwkit")  # the reference still runs it


def test_mixed_precision_transfers_on_the_next_batch_like_aihwkit():
    cfg = load_device(DEVICES / "mp_reram_es.toml").rpu_config()
    t = TorchPulsedEngine(IN, OUT, cfg, seed=0)
    t.set_weights(torch.zeros(OUT, IN))
    g = torch.Generator().manual_seed(0)
    x, d = torch.rand(B, IN, generator=g), torch.rand(B, OUT, generator=g) - 0.5
    assert t.update(x, d, 0.05) == 0  # accumulated in chi only
    chi = t.device_state()["hidden_weights_chi"]
    assert torch.allclose(chi, 0.05 * d.T @ x, atol=1e-6)
    assert t.update(x, d, 0.05) > 0  # transferred after the first sample of the next batch
    # chi kept what the transfer could not write (|r| < granularity), then the other 15 samples
    gran = weight_granularity(cfg.device)
    rest = t.device_state()["hidden_weights_chi"] - 0.05 * d[1:].T @ x[1:]
    assert float(rest.abs().max()) < gran * (1 + 1e-4)


def test_pcm_refresh_resets_saturated_pairs():
    t = TorchPulsedEngine(IN, OUT, load_device(DEVICES / "pcm.toml").rpu_config(), seed=0)
    t.set_weights(torch.zeros(OUT, IN))
    g = torch.Generator().manual_seed(0)
    for k in range(30):  # alternate signs: both devices of a pair grow until the refresh fires
        x, d = torch.rand(B, IN, generator=g), torch.rand(B, OUT, generator=g) - 0.5
        t.update(x, d if k % 2 else -d, 0.05)
    assert t.cell.refreshes > 0
    s = t.device_state()
    both_high = (s["hidden_weights_1"] / s["max_bound_1"] > 0.75) & (s["hidden_weights_0"] / s["max_bound_0"] > 0.75)
    assert float(both_high.float().mean()) < 0.05


def test_pcm_refresh_scan_sums_read_power_and_finds_the_candidates():
    """The refresh's one-pass scan: the read power term is the sum over both arrays of each device's
    weight over its own bound clipped to [0, 1], the candidates the pairs with both devices above
    their limits, and their count; a pair at a limit or with one device below it is not a candidate."""
    from analogff.engine.cells.one_sided import _k_refresh_scan

    g = torch.Generator().manual_seed(3)
    wp, wm = torch.rand(40, 30, generator=g) * 1.2 - 0.1, torch.rand(40, 30, generator=g) * 1.2 - 0.1
    inv_p, inv_m = 1 / (0.5 + torch.rand(40, 30, generator=g)), 1 / (0.5 + torch.rand(40, 30, generator=g))
    wp[0, 0], wm[0, 0] = 0.6, 0.9  # wp exactly at its limit: not a candidate
    g_rel, cand, n = _k_refresh_scan(wp, wm, inv_p, inv_m, 0.6, 0.5)
    want = (wp * inv_p).clamp(0, 1).double().sum() + (wm * inv_m).clamp(0, 1).double().sum()
    assert float(g_rel) == pytest.approx(float(want), rel=1e-12)
    assert torch.equal(cand.bool(), (wp > 0.6) & (wm > 0.5))
    assert float(cand[0, 0]) == 0.0 and 0 < int(n) == int(cand.sum()) < cand.numel()


def test_pcm_pair_weights_are_cached_and_follow_every_change():
    """The one-sided pair's w_1 - w_0 is computed once per state of its arrays: the same tensor
    while nothing changes, a fresh difference after an update, set_weights, an in-place change of a
    device array, a reload of the state and a change of the returned tensor itself."""
    t = TorchPulsedEngine(IN, OUT, load_device(DEVICES / "pcm.toml").rpu_config(), seed=0)
    cell = t.cell
    t.set_weights(torch.rand(OUT, IN) - 0.5)

    def check() -> torch.Tensor:
        w = cell.weights()
        assert torch.equal(w, cell.devs[1].w - cell.devs[0].w)
        return w

    w = check()
    assert cell.weights() is w  # cached
    g = torch.Generator().manual_seed(0)
    t.update(torch.rand(B, IN, generator=g), torch.rand(B, OUT, generator=g) - 0.5, 0.05)
    assert not torch.equal(check(), w)
    w = check()
    t.set_weights(torch.zeros(OUT, IN))
    assert float(check().abs().max()) == 0.0
    cell.devs[1].w.add_(0.25)  # in place: same tensor object, new version
    assert float(check().min()) == pytest.approx(0.25)
    state = t.state()
    t.set_weights(torch.full((OUT, IN), -0.1))
    check()
    t.load_state(state)
    assert float(check().min()) == pytest.approx(0.25)
    cell.weights().mul_(0)  # a caller wrote into the returned tensor: not served again
    assert float(check().min()) == pytest.approx(0.25)


def test_crossbar_to_and_engine_device_argument():
    xbar = Crossbar(IN, OUT, device=DEVICES / "idealized.toml", seed=0, engine="torch").to("cpu")
    assert xbar.engine.device == torch.device("cpu")
    xbar.update(torch.rand(4, IN), torch.rand(4, OUT) - 0.5, 0.01)
    e = TorchPulsedEngine(8, 4, load_device(DEVICES / "idealized.toml").rpu_config(), seed=0, device="cpu")
    assert e.to("cpu") is e


@pytest.mark.skipif(os.environ.get("ANALOGFF_TEST_COMPILE") != "1",
                    reason="torch.compile takes ~10 s per kernel; set ANALOGFF_TEST_COMPILE=1")
@pytest.mark.parametrize("name", ["idealized", "reram_sb", "reram_es", "pcm", "mp_reram_es"])
def test_compiled_kernels_match_eager(name):
    ws = []
    for comp in (False, True):
        t = TorchPulsedEngine(IN, OUT, load_device(DEVICES / f"{name}.toml").rpu_config(), seed=0, compile=comp)
        t.set_weights(torch.full((OUT, IN), 0.1))
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            t.update(torch.rand(B, IN, generator=g), torch.rand(B, OUT, generator=g) - 0.5, 0.02)
        ws.append(t.get_weights())
    # same random bits; fused code may round differently (and flip a rare pulse decision)
    assert float((ws[0] - ws[1]).abs().gt(1e-3).float().mean()) < 0.01
