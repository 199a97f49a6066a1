"""Every read the simulation performs is counted (analogff.engine.reads, Crossbar's counters):
bound-management retries, PCM refresh reads, the transposed MVM's read power.

Each test counts the reads independently of the counting code (a spy on the MVM's passes, on the
refresh) and compares them with the crossbar's counters; each failed before the counting fixes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analogff.crossbar import Crossbar

DEVICES = Path(__file__).resolve().parents[1] / "devices"
IN, OUT, B = 64, 32, 16


def _spy_passes(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record the (input rows, input scale) of every pass of the engine's MVM."""
    from analogff.engine.mvm import _analog_mvm

    cls = _analog_mvm()
    orig = cls._compute_analog_mv.__func__
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(c, **kw):
        scale = kw["scale"]
        calls.append((kw["input_"].detach().clone(), torch.as_tensor(scale).detach().clone()))
        return orig(c, **kw)

    monkeypatch.setattr(cls, "_compute_analog_mv", classmethod(spy))
    return calls


def test_bound_management_retries_are_counted(monkeypatch):
    """Two vectors clip at the ADC bound and are retried at half their input scale: each retry is
    one more MVM, in DAC and out ADC conversions, 2 in out devices read, and read power with the
    retried pass's row voltages (V halves per retry)."""
    xbar = Crossbar(IN, OUT, device=DEVICES / "ecram.toml", seed=0, engine="torch")
    g = torch.Generator().manual_seed(5)
    w = (torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.9
    xbar.set_weights(w * xbar.w_scale)
    x = torch.rand(B, IN, generator=g) * 0.2
    x[:2] = torch.sign(xbar.engine.get_weights()[0])  # these two vectors drive column 0 past the bound
    calls = _spy_passes(monkeypatch)
    xbar.forward(x)
    passes = sum(int(rows.shape[0]) for rows, _ in calls)
    assert passes > B  # retries happened
    c = xbar.counters
    assert c.mvms == passes
    assert c.dac_conversions == passes * IN and c.adc_conversions == passes * OUT
    assert c.device_reads == 2 * passes * IN * OUT
    gp, gm = xbar.conductances()
    gsum = (gp + gm).sum(0)  # (in,): the conductance each driven row sees
    v_read = xbar.profile.physics.read_voltage_V
    want = sum(float((((rows.double() * scale.double()).clamp(-1, 1) * v_read).square().sum(0) * gsum).sum())
               for rows, scale in calls)
    assert c.read_v2g_W == pytest.approx(want, rel=1e-5)


def test_pcm_refresh_reads_are_counted(monkeypatch):
    """Every refresh reads both device arrays column by column (one driven row at the read voltage,
    every column through the ADC), all devices, whatever the simulation's candidate pre-filter."""
    xbar = Crossbar(IN, OUT, device=DEVICES / "pcm.toml", seed=0, engine="torch")
    xbar.set_weights(torch.zeros(OUT, IN))
    cell = xbar.engine.cell
    seen: list[float] = []
    orig = cell._refresh

    def refresh(rng):
        gp, gm = xbar.conductances()  # what the read sees, before any reset
        seen.append(float((gp + gm).sum()))
        return orig(rng)

    monkeypatch.setattr(cell, "_refresh", refresh)
    g = torch.Generator().manual_seed(0)
    for k in range(6):
        x, d = torch.rand(B, IN, generator=g), torch.rand(B, OUT, generator=g) - 0.5
        xbar.update(x, d if k % 2 else -d, 0.05 * xbar.w_scale)
    xbar.update_rows(torch.randn(OUT, IN, generator=g), 0.05 * xbar.w_scale)
    n = len(seen)
    assert n == 7  # PCMPreset: refresh_every 1 mini-batch
    c = xbar.counters
    assert c.mvms == 2 * IN * n and c.dac_conversions == 2 * IN * n
    assert c.adc_conversions == 2 * IN * OUT * n and c.device_reads == 2 * IN * OUT * n
    v_read = xbar.profile.physics.read_voltage_V
    assert c.read_v2g_W == pytest.approx(v_read ** 2 * sum(seen), rel=1e-6)
    assert xbar.engine.take_reads().mvms == 0  # the crossbar took them


def test_backward_read_power_is_counted():
    """Analog BP's transposed MVM: the error vector, scaled by the backward noise management,
    drives the columns at up to the read voltage; the same conductances are read."""
    xbar = Crossbar(IN, OUT, device=DEVICES / "idealized.toml", seed=0, engine="torch")
    g = torch.Generator().manual_seed(1)
    d = torch.randn(B, OUT, generator=g)
    xbar.backward(d)
    gp, gm = xbar.conductances()
    gsum = (gp + gm).sum(1)  # (out,): the conductance each driven column sees
    u = d.double() / d.double().abs().amax(1, keepdim=True)  # abs-max noise management
    want = float(((u * xbar.profile.physics.read_voltage_V).square().sum(0) * gsum).sum())
    c = xbar.counters
    assert c.read_v2g_W == pytest.approx(want, rel=1e-9) and want > 0
    assert c.backward_mvms == B and c.mvms == 0


def test_engine_read_tally_is_taken_and_reset():
    """The engine's tally, used directly: forward retries add to it, take_reads returns and resets."""
    from analogff.devices import load_device
    from analogff.engine import TorchPulsedEngine

    e = TorchPulsedEngine(IN, OUT, load_device(DEVICES / "ecram.toml").rpu_config(), seed=0)
    g = torch.Generator().manual_seed(5)
    e.set_weights((torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.9)
    x = torch.rand(4, IN, generator=g) * 0.2
    x[:1] = torch.sign(e.get_weights()[0])
    e.forward(x)
    r = e.take_reads()
    assert r.mvms >= 1 and r.adc_conversions == r.mvms * OUT and r.rows_v2.shape == (IN,)
    assert not e.take_reads()
