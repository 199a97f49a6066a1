"""The torch engine's transfer compounds (Tiki-Taka, TTv2, chopped TTv2, AGAD) against aihwkit's tiles.

Every transfer preset of aihwkit 1.2.0 (4 algorithms x 6 devices) runs in both engines from the same
device-to-device parameters and weights, on the same inputs and errors (a consistent target
direction, so that A and C move), and the trajectories are compared:

* bookkeeping that is deterministic given the data, exactly: samples counted, the column being
  transferred, full sweeps, the running means m_x, m_d of auto_scale and the pulse count learning
  rate (float32 rounding), AGAD's choppers (they flip on a schedule);
* statistics, over 3 seeds: the mean move of C and of A along the target direction and their
  spreads, and the mean |H|. aihwkit's C++ random generator cannot be seeded, so these are
  distributions (on the persistent weights where write noise hides the pulses' effect); c-TTv2's random choppers make A's move along the target direction itself random
  (it is multiplied by a chopper history), so A is compared by its spread there.

The shipped on-array profiles (devices/*_agad|_cttv2|_ttv2.toml, their FF-tuned overrides) are
compared the same way. The in_chop_prob of the chopped presets is raised for the test (0.2, AGAD 0.1) so that choppers
flip and AGAD passes its warm-up (no C writes before each column was read ceil(1/p) times) within
60 updates of a 64 x 32 tile; everything else is the preset's.
"""

from __future__ import annotations

import math

import pytest
import torch

import aihwkit.simulator.presets as presets
from analogff.crossbar import AihwkitEngine
from analogff.engine import TorchPulsedEngine

IN, OUT, B = 64, 32, 16
DEVICES = ("ReRamES", "ReRamSB", "Capacitor", "EcRam", "EcRamMO", "Idealized")
FAMILIES = ("TikiTaka", "TTv2", "ChoppedTTv2", "AGAD")
PRESETS = [f"{fam}{dev}Preset" for fam in FAMILIES for dev in DEVICES]
LR = {"TikiTaka": 0.1, "TTv2": 0.01, "ChoppedTTv2": 0.01, "AGAD": 0.01}


PROFILES = sorted(p.stem for p in (__import__("pathlib").Path(__file__).resolve().parents[1] / "devices").glob("*.toml")
                  if p.stem.endswith(("_agad", "_cttv2", "_ttv2")))


def _config(name: str):
    """The preset (or shipped profile, by name) with the test's chopper probabilities."""
    if name in PROFILES:
        from analogff.devices import load_device

        cfg = load_device(name).rpu_config()
        if name.endswith("_cttv2"):
            cfg.device.in_chop_prob = 0.2
        elif name.endswith("_agad"):
            cfg.device.in_chop_prob = 0.1
        return cfg
    cfg = getattr(presets, name)()
    if name.startswith("ChoppedTTv2"):
        cfg.device.in_chop_prob = 0.2
    elif name.startswith("AGAD"):
        cfg.device.in_chop_prob = 0.1
    return cfg


def _family(name: str) -> str:
    if name in PROFILES:
        return {"agad": "AGAD", "cttv2": "ChoppedTTv2", "ttv2": "TTv2"}[name.rsplit("_", 1)[1]]
    return next(f for f in sorted(FAMILIES, key=len, reverse=True) if name.startswith(f))


def _run(name: str, seed: int, steps: int = 60) -> dict:
    """Both engines through ``steps`` updates; returns their trajectories' summaries."""
    a = AihwkitEngine(IN, OUT, _config(name), seed)
    t = TorchPulsedEngine(IN, OUT, _config(name), seed)
    g = torch.Generator().manual_seed(100 + seed)
    w0 = (torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.3
    a.set_weights(w0)
    t.set_weights(w0)
    t.load_device_state(a.device_state())
    target = torch.randn(OUT, IN, generator=g) * 0.1
    lr = LR[_family(name)]
    for _ in range(steps):
        x = torch.rand(B, IN, generator=g)
        d = (torch.randn(B, OUT, generator=g) * 0.5 + x @ target.T) * 0.01
        a.update(x, d, lr)
        t.update(x, d, lr)
    direction = -target.sign()
    out = {}
    for key, eng in (("aihwkit", a), ("torch", t)):
        s = eng.device_state()
        # what the pulses act on: the persistent weights where write noise hides them (ReRAM)
        dc = s.get("persistent_weights_1", eng.get_weights()) - w0
        fa = s.get("persistent_weights_0", s["hidden_weights_0"])
        h = s.get("buffered_FP_weight_0", s.get("buffered_FP_weight"))
        out[key] = {"c_proj": float((dc * direction).mean()), "c_std": float(dc.std()),
                    "a_proj": float((fa * direction).mean()), "a_std": float(fa.std()),
                    "h_abs": float(h.abs().mean()) if h is not None else 0.0}
    out["extra"] = a.tile.tile.dump_extra()
    out["cell"] = t.cell
    return out


@pytest.mark.parametrize("name", [f"{fam}EcRamPreset" for fam in FAMILIES] + ["AGADReRamSBPreset", "ChoppedTTv2CapacitorPreset"])
def test_transfer_bookkeeping_equals_aihwkit(name):
    r = _run(name, seed=0, steps=30)
    ex, cell = r["extra"], r["cell"]

    def one(key: str) -> float:
        return float(ex[f"rpu.rpu_device.{key}"][0])

    assert one("current_update_idx") == cell.n_updates == 30 * B
    assert one("current_slice_indices") == cell.slice
    if cell.alg != "tiki_taka":
        assert one("transfer_counter") == cell.transfer_counter
        for key, mine in (("m_x", cell.m_x), ("m_d", cell.m_d), ("tmp_count_lr", cell.count_lr)):
            assert math.isclose(one(key), mine, rel_tol=2e-5), (key, one(key), mine)
        chop = torch.tensor(ex["rpu.rpu_device.in_chopper"]) > 0  # aihwkit: True = flipped
        if cell.alg == "dynamic" or float(cell.cfg.in_chop_prob) == 0:  # deterministic choppers
            assert torch.equal(chop, cell.in_chop.cpu() < 0)


@pytest.mark.parametrize("name", PRESETS + PROFILES)
def test_transfer_trajectories_match_aihwkit(name):
    """Three seeds; aihwkit seeds its generator from the clock, so its side is a random draw and
    with three seeds the standard error is itself noisy (one fresh-clone run in a few dozen put
    TikiTakaReRamSBPreset's c_proj outside 4 s.e.). Where a check fails on three seeds it is
    repeated, with the same bounds, on six."""
    runs = [_run(name, seed) for seed in range(3)]
    try:
        _check_trajectories(name, runs)
    except AssertionError:
        _check_trajectories(name, runs + [_run(name, seed) for seed in range(3, 6)])


def _check_trajectories(name: str, runs: list[dict]) -> None:
    def stats(key: str) -> tuple[float, float, float]:
        """(aihwkit mean, torch mean, standard error of their difference) over the seeds."""
        a = torch.tensor([r["aihwkit"][key] for r in runs], dtype=torch.float64)
        t = torch.tensor([r["torch"][key] for r in runs], dtype=torch.float64)
        return float(a.mean()), float(t.mean()), float((a.var() / len(runs) + t.var() / len(runs)).sqrt())

    def close(key: str, rel: float, floor: float = 0.0) -> None:
        a, t, se = stats(key)
        assert abs(t - a) <= 4 * se + rel * abs(a) + floor, (key, a, t, se)

    # C: the weights' move along the target and their spread
    c_std = stats("c_std")[0]
    close("c_proj", 0.10, 0.01 * c_std + 1e-5)
    close("c_std", 0.10, 1e-4)
    # A: the fast array (c-TTv2's random choppers make its move along the target random: by the spread)
    close("a_std", 0.08)
    if _family(name) != "ChoppedTTv2":
        close("a_proj", 0.08, 0.02 * stats("a_std")[0])
    # H
    close("h_abs", 0.08, 0.005)
