"""Coincidence moments (analogff.engine.moments)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analogff.devices import load_device
from analogff.engine.moments import SignedMoments

DEVICES = Path(__file__).resolve().parents[1] / "devices"



@pytest.mark.parametrize("name", ["idealized", "reram_sb", "pcm", "capacitor"])
def test_rowwise_moments_equal_the_identity_batch(name):
    """The element-wise row-by-row moments are exactly the GEMM moments of the batch x = I, d = u^T."""
    from analogff.engine import weight_granularity
    from analogff.engine.moments import _coincidence_moments, _rowwise_moments
    from analogff.engine.rng import _Rng

    cfg = load_device(DEVICES / f"{name}.toml").rpu_config()
    gran = weight_granularity(cfg.device)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(12, 30, generator=g) * torch.rand(1, 30, generator=g)  # rows of different scales
    u[:, 3] = 0.0  # a row with nothing to transfer
    for lr in (gran * 0.5, gran * 40):
        fast = _rowwise_moments(u, lr, cfg.update, gran)
        ref = _coincidence_moments(torch.eye(30), u.T.contiguous(), lr, cfg.update, gran, _Rng(0, torch.device("cpu")),
                                   max_second=0)
        for a, b in zip(fast[:4], ref[:4]):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert fast[4] == ref[4] == 1.0


@pytest.mark.parametrize("d_sign", [1, -1, 0])
@pytest.mark.parametrize("chopped", [False, True])
def test_coincidence_moments_split_by_the_sign_of_x_d_and_the_choppers(d_sign, chopped):
    """Up / down means and second moments against a direct sum over the batch: a device's
    coincidence counts as down where x_i c_i d_o > 0 (c the input chopper), up where < 0. Covers the
    one-GEMM path (x >= 0, d of one sign: FF's halves) and the general one (d of both signs)."""
    from analogff.engine import weight_granularity
    from analogff.engine.moments import SignedMoments, _coincidence_moments, split_by_sign
    from analogff.engine.pulse_trains import _probabilities, _train_constants
    from analogff.engine.rng import _Rng

    cfg = load_device(DEVICES / "ecram.toml").rpu_config()
    gran = weight_granularity(cfg.device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(20, 30, generator=g) * (torch.rand(20, 30, generator=g) < 0.4)
    d = torch.randn(20, 12, generator=g)
    d = d.abs() * d_sign if d_sign else d
    chop = torch.where(torch.rand(30, generator=g) < 0.5, -1.0, 1.0) if chopped else None
    lr = gran * 20
    got = _coincidence_moments(x, d, lr, cfg.update, gran, _Rng(0, torch.device("cpu")), max_second=0, col_sign=chop)
    bl, a, b = _train_constants(x.abs().amax(1), d.abs().amax(1), lr, cfg.update, gran)
    px, pd = _probabilities(x, b, cfg.update), _probabilities(d, a, cfg.update)
    xs = x * (chop if chopped else 1.0)
    sign = torch.sign(d)[:, :, None] * torch.sign(xs)[:, None, :]  # (B, out, in)
    c = (bl[:, None, None] * pd[:, :, None] * px[:, None, :]).double()
    c2 = c * (pd[:, :, None] * px[:, None, :]).double()
    want = [(c * (sign < 0)).sum(0), (c * (sign > 0)).sum(0), (c2 * (sign < 0)).sum(0), (c2 * (sign > 0)).sum(0)]
    assert float(want[0].sum()) > 0 or float(want[1].sum()) > 0
    for got_t, want_t in zip(got[:4], want):
        assert torch.allclose(got_t.double(), want_t, rtol=1e-5, atol=1e-6)
    assert got[4] == 1.0
    # signed: FF's one-sign halves come as SignedMoments (the column signs folded into the GEMM)
    # whose split by sign is the same four arrays, bit for bit
    signed = _coincidence_moments(x, d, lr, cfg.update, gran, _Rng(0, torch.device("cpu")), max_second=0,
                                  col_sign=chop, signed=True)
    assert isinstance(signed, SignedMoments) == (d_sign != 0)
    if d_sign:
        assert signed.m2_scale == 1.0
        for got_t, four_t in zip(got[:4], split_by_sign(signed.mu, signed.m2)):
            assert torch.equal(got_t, four_t)


@pytest.mark.parametrize("name", ["ecram", "reram_sb_cttv2", "reram_es", "pcm"])
def test_pulse_signed_with_a_second_moment_scale_applies_the_split_moments(name):
    """DeviceArray.pulse_signed with ``m2_scale`` (FF's half batch on a fast array: the affine and
    ExpStep models' own kernels, PCM's split fallback) leaves the array exactly where pulse with the
    four split moment arrays does, from the same random state."""
    from analogff.engine import TorchPulsedEngine
    from analogff.engine.moments import SignedMoments

    eng = TorchPulsedEngine(30, 12, load_device(DEVICES / f"{name}.toml").rpu_config(), seed=0)
    cell = eng.cell
    arr = cell.fast if hasattr(cell, "fast") else cell.devs[1] if hasattr(cell, "devs") else cell.arr
    g = torch.Generator().manual_seed(2)
    arr.set_weights((torch.rand(arr.shape, generator=g) - 0.5) * 0.2, eng.rng)
    mu = torch.rand(arr.shape, generator=g) * 3
    m2 = mu * torch.rand(arr.shape, generator=g) * 0.5
    down = torch.rand(arr.shape[1], generator=g) < 0.5
    up = ~down
    state = (arr.hidden.clone(), arr.w.clone(), eng.rng.gen.get_state())
    n_split = arr.pulse(mu * up, mu * down, m2 * up, m2 * down, eng.rng, m2_scale=1.5, post=True)
    want = arr.hidden.clone()
    arr.hidden, arr.w = state[0].clone(), state[1].clone()
    eng.rng.gen.set_state(state[2])
    n_signed = arr.pulse_signed(SignedMoments(torch.where(down, mu, -mu), m2, 1.5), eng.rng, post=True)
    assert not torch.equal(want, state[0])  # something was pulsed
    assert torch.equal(arr.hidden, want)
    assert n_signed == pytest.approx(n_split, rel=1e-6)


@pytest.mark.parametrize("name,variant", [("idealized", ""), ("ecram", ""), ("reram_sb", ""), ("capacitor", ""),
                                          ("reram_sb", "decay"), ("ecram", "write_noise"), ("reram_es", ""),
                                          ("pcm", "")])
def test_row_by_row_update_forms_its_moments_in_the_kernel_and_equals_the_moments_path(name, variant):
    """A cell's ``update_rows`` writes two moment arrays (:class:`SignedMoments`), which the device
    kernel splits by sign itself (every model's ``apply_signed``, PCM's pair kernel); it must leave the array where computing the four moment arrays and
    pulsing them does (the path it replaced), bit for bit, from the same random state."""
    from analogff.engine import TorchPulsedEngine, weight_granularity
    from analogff.engine.moments import _rowwise_moments

    rpu = load_device(DEVICES / f"{name}.toml").rpu_config()
    if variant == "decay":
        rpu.device.lifetime = 50.0
    if variant == "write_noise":
        rpu.device.write_noise_std = 0.5
    eng = TorchPulsedEngine(30, 12, rpu, seed=0)
    cell = eng.cell
    arrays = list(cell.devs) if hasattr(cell, "devs") else [cell.arr]
    g = torch.Generator().manual_seed(5)
    for arr in arrays:  # a one-sided pair's conductances are >= 0, a single device's weights of both signs
        r = torch.rand(arr.shape, generator=g)
        arr.set_weights(r * 0.3 if hasattr(cell, "devs") else (r - 0.5) * 0.6, eng.rng)
    u = torch.randn(12, 30, generator=g) * torch.rand(1, 30, generator=g)
    u[:, 4] = 0.0
    lr = 30 * weight_granularity(rpu.device)
    state = ([(a.hidden.clone(), a.w.clone(), a.calls) for a in arrays], eng.rng.gen.get_state(),
             eng.rng.cpu.get_state(), getattr(cell, "n_samples", 0))
    n_new = cell.update_rows(u, lr, eng.rng)
    got = [(a.hidden.clone(), a.w.clone()) for a in arrays]
    for a, (h, w, calls) in zip(arrays, state[0]):
        a.hidden, a.w, a.calls = h.clone(), w.clone(), calls
        if not a.persistent:
            a.w = a.hidden
    eng.rng.gen.set_state(state[1])
    eng.rng.cpu.set_state(state[2])
    moments = _rowwise_moments(u, lr, cell.up, cell.gran)
    if hasattr(cell, "devs"):
        cell.n_samples = state[3]
        n_old = cell._apply_moments(moments, u.shape[1], eng.rng, one_sign=True)
    else:
        n_old = cell.arr.pulse(*moments[:4], eng.rng, m2_scale=moments[4], post=True, one_sign=True)
    for a, (h, w) in zip(arrays, got):
        assert torch.equal(a.hidden, h) and torch.equal(a.w, w)
    assert any(not torch.equal(h, s[0]) for (h, _), s in zip(got, state[0]))  # something was pulsed
    assert n_new == n_old and n_new > 0


def test_pulse_signed_on_exact_pulse_exp_step_splits_first_and_equals_pulse():
    """An ExpStep array with exact pulses (PCM's device) has no signed kernel: ``pulse_signed``
    splits the moments and runs its exact kernel, as ``pulse`` with the four arrays does."""
    from analogff.engine import TorchPulsedEngine

    eng = TorchPulsedEngine(30, 12, load_device(DEVICES / "pcm.toml").rpu_config(), seed=0)
    arr = eng.cell.devs[1]
    assert arr.exact_pulses
    g = torch.Generator().manual_seed(6)
    arr.set_weights(torch.rand(arr.shape, generator=g) * 0.3, eng.rng)
    mu = torch.rand(arr.shape, generator=g) * 2  # up pulses only: the exact kernel raises the device
    m2 = mu * 0.3
    state = (arr.hidden.clone(), eng.rng.gen.get_state())
    n_signed = arr.pulse_signed(SignedMoments(-mu, m2), eng.rng, post=True)
    got = arr.hidden.clone()
    arr.hidden = arr.w = state[0].clone()
    eng.rng.gen.set_state(state[1])
    n_four = arr.pulse(mu, None, m2, None, eng.rng, post=True)
    assert torch.equal(got, arr.hidden) and not torch.equal(got, state[0])
    assert n_signed == n_four > 0
