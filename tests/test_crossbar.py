"""The crossbar: forward/update on every profile, physical ranges, counters, noise, drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analogff.crossbar import ENGINES, Crossbar
from analogff.devices import list_devices, load_device
from analogff.energy import OpCounts

DEVICES = Path(__file__).resolve().parents[1] / "devices"
PROFILES = list_devices(DEVICES)


def batch(b: int, n: int, seed: int = 0, positive: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, n, generator=g)
    return x if positive else x * 2 - 1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_forward_update_ranges_and_counters(path, engine):
    dev = load_device(path)
    xbar = Crossbar(64, 32, device=dev, seed=0, engine=engine)
    x = batch(8, 64)
    y = xbar.forward(x)
    assert y.shape == (8, 32) and torch.isfinite(y).all()
    fwd = OpCounts(**xbar.counters.as_dict())  # the forward's (PCM's updates add their refresh reads)
    w_before = xbar.get_weights()
    fast_before = xbar.engine.device_state()["hidden_weights_0"].clone() if xbar.transfer else None
    d = batch(8, 32, seed=1, positive=False)
    xbar.update(x, d, lr=0.05)
    xbar.update(x, d, lr=0.05)  # mixed precision transfers its accumulator on the next update
    c = xbar.counters
    assert c.backward_adc_conversions == 0 and c.backward_mvms == 0 and c.backward_dac_conversions == 0
    # aihwkit's CPU tile does not report a transfer compound's pulses (the crossbar warns)
    assert (c.update_pulses > 0 or (xbar.transfer and engine == "aihwkit")) and c.updates == 16
    assert fwd.mvms == 8 and fwd.dac_conversions == 8 * 64 and fwd.adc_conversions == 8 * 32
    assert fwd.device_reads == 2 * 8 * 64 * 32 and fwd.read_v2g_W > 0
    if xbar.transfer:  # the update pulses the fast array A; AGAD writes C only after its warm-up
        assert not torch.equal(fast_before, xbar.engine.device_state()["hidden_weights_0"])
    else:
        assert not torch.equal(w_before, xbar.get_weights())
    gp, gm = xbar.conductances()
    p = dev.physics
    assert gp.shape == gm.shape == (32, 64)
    assert float(gp.min()) >= p.g_min_S and float(gp.max()) <= p.g_max_S
    assert float(gm.min()) >= p.g_min_S and float(gm.max()) <= p.g_max_S
    c.reset()
    assert c.mvms == 0 and c.read_v2g_W == 0.0


@pytest.mark.parametrize("engine", ENGINES)
def test_update_moves_weights_in_the_sgd_direction(engine):
    dev = load_device(DEVICES / "idealized.toml")
    xbar = Crossbar(64, 32, device=dev, seed=0, engine=engine)
    x, d = batch(16, 64), batch(16, 32, seed=3, positive=False)
    w0 = xbar.get_weights()
    lr = 0.002  # small enough that no pulse train is clipped at desired_bl (update management)
    for _ in range(5):
        xbar.update(x, d, lr)
    dw = xbar.get_weights() - w0
    expected = -5 * lr * d.T @ x
    cos = torch.nn.functional.cosine_similarity(dw.flatten(), expected.flatten(), dim=0)
    assert cos > 0.8, cos
    assert 0.5 < float(dw.norm() / expected.norm()) < 1.5


def ideal_periphery(name: str = "idealized.toml"):
    """No DAC quantisation, no output noise, no bound management: only the ADC step remains."""
    return load_device(DEVICES / name).with_overrides(
        forward__inp_res=-1.0, forward__out_noise=0.0, forward__w_noise=0.0,
        forward__bound_management="NONE", forward__noise_management="NONE",
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_ideal_periphery_forward_is_xWT_within_adc_step(engine):
    dev = ideal_periphery()
    io = dev.rpu_config().forward
    xbar = Crossbar(64, 32, device=dev, seed=0, engine=engine).eval()
    x = batch(16, 64) * 0.5
    y = xbar.forward(x)
    exact = x @ xbar.get_weights().T
    adc_step = io.out_res * 2 * io.out_bound * xbar.w_scale  # logical units
    err = (y - exact).abs().max()
    assert err <= adc_step / 2 + 1e-6, (float(err), adc_step)
    assert err > 0  # the ADC really quantises


@pytest.mark.parametrize("engine", ENGINES)
def test_output_noise_matches_preset_out_noise(engine):
    dev = load_device(DEVICES / "reram_sb.toml").with_overrides(
        forward__inp_res=-1.0, forward__out_res=-1.0, forward__bound_management="NONE",
    )
    out_noise = dev.rpu_config().forward.out_noise
    xbar = Crossbar(64, 32, device=dev, seed=0, engine=engine)
    x = batch(1, 64)
    x = x / x.abs().max()  # noise management scales by max|x| = 1
    ys = torch.stack([xbar.forward(x)[0] for _ in range(400)]) / xbar.w_scale
    std = ys.std(0).mean()
    assert abs(float(std) / out_noise - 1) < 0.15, float(std)


def test_pcm_drift_lowers_conductance_as_aihwkit_model_says():
    dev = load_device(DEVICES / "pcm.toml")
    xbar = Crossbar(64, 32, device=dev, seed=0)
    for _ in range(3):
        xbar.update(batch(8, 64), batch(8, 32, seed=5, positive=False), lr=0.05)
    means = []
    for t in (1.0, 3600.0, 86400.0 * 365):
        xbar.drift_to(t, compensate=False)
        gp, gm = xbar.conductances()
        means.append(float((gp + gm).mean()))
    assert means[0] > means[1] > means[2]
    # G(t) = G(t0) ((t + t0)/t0)^-nu, nu in [0.049, 0.1] for PCMLikeNoiseModel, t0 = 20 s
    ratio = means[2] / means[0]
    t0 = 20.0
    lo = ((86400.0 * 365 + t0) / (1 + t0)) ** -0.1
    hi = ((86400.0 * 365 + t0) / (1 + t0)) ** -0.049
    assert lo * 0.8 < ratio < hi * 1.2, (ratio, lo, hi)
    xbar.reset_drift()
    with pytest.raises(ValueError, match="noise_model"):
        Crossbar(8, 4, device=load_device(DEVICES / "ecram.toml")).drift_to(10.0)


def test_backward_is_counted_separately():
    xbar = Crossbar(16, 8, device=load_device(DEVICES / "idealized.toml"), seed=0)
    dx = xbar.backward(batch(4, 8, positive=False))
    assert dx.shape == (4, 16)
    c = xbar.counters
    assert c.backward_mvms == 4 and c.backward_adc_conversions == 4 * 16 and c.mvms == 0


def test_bad_inputs_are_rejected():
    xbar = Crossbar(16, 8, device=load_device(DEVICES / "idealized.toml"), seed=0)
    with pytest.raises(ValueError, match="last dimension 16"):
        xbar.forward(torch.zeros(2, 15))
    with pytest.raises(ValueError, match="NaN"):
        xbar.update(torch.full((2, 16), float("nan")), torch.zeros(2, 8), 0.1)
    for bad in (float("nan"), float("inf"), float("-inf")):  # one non-finite entry anywhere
        x = torch.rand(3, 16)
        x[2, 5] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            xbar.forward(x)
        u = torch.rand(8, 16)
        u[7, 15] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            xbar.update_rows(u, 0.1)
    assert xbar.forward(torch.zeros(0, 16)).shape == (0, 8)  # empty batch: nothing to check
    with pytest.raises(ValueError, match="lr"):
        xbar.update(torch.zeros(2, 16), torch.zeros(2, 8), -1.0)
    with pytest.raises(ValueError, match="engine"):
        Crossbar(16, 8, device=load_device(DEVICES / "idealized.toml"), engine="verilog")


def test_state_dict_round_trip():
    dev = load_device(DEVICES / "reram_sb.toml")
    a = Crossbar(16, 8, device=dev, seed=0)
    a.update(batch(4, 16), batch(4, 8, positive=False), 0.1)
    b = Crossbar(16, 8, device=dev, seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a.get_weights(), b.get_weights())
    assert b.counters == a.counters


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["idealized", "reram_sb", "pcm"])
def test_update_rows_is_the_row_by_row_update(name, engine):
    """update_rows(U) applies W - lr U with the pulses of update(I, U^T): same mean change per device
    (the torch engine computes it element-wise, not through an identity batch). aihwkit's tiles are
    clock-seeded and each draws its Gaussians from its own table, whose mean biases a ReRAM SB tile's
    update by a few per cent: the ratio of two tiles' mean changes scatters by 0.04 (100 runs), so
    aihwkit's side is the sum over 4 pairs of tiles."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(32, 64, generator=g)
    move_a = move_b = 0.0
    for _ in range(4 if engine == "aihwkit" else 1):
        a = Crossbar(64, 32, device=DEVICES / f"{name}.toml", seed=0, engine=engine)
        b = Crossbar(64, 32, device=DEVICES / f"{name}.toml", seed=0, engine=engine)
        w0 = a.get_weights()
        lr = 20 * float(a.w_scale) * 1e-3 * (5 if name == "reram_sb" else 1)  # a few pulses per device
        for _ in range(3):
            a.update_rows(u, lr)
            b.update(torch.eye(64), u.T, lr)
        da, db = a.get_weights() - w0, b.get_weights() - w0
        assert a.counters.updates == b.counters.updates == 3 * 64
        assert a.counters.update_pulses == pytest.approx(b.counters.update_pulses, rel=0.1)
        # both move every weight against u, by the same amount on average
        assert torch.corrcoef(torch.stack([da.flatten(), -u.flatten()]))[0, 1] > 0.5
        move_a += float((da * -u.sign()).mean())
        move_b += float((db * -u.sign()).mean())
    assert move_a == pytest.approx(move_b, rel=0.15)


def test_mixed_precision_update_rows_equals_the_identity_batch():
    """Mixed precision: chi accumulates lr u column by column, with aihwkit's transfer points, exactly
    as update(I, u^T) does (the preset quantises neither x nor d, so both draw the same numbers)."""
    g = torch.Generator().manual_seed(5)
    a = Crossbar(64, 32, device=DEVICES / "mp_reram_es.toml", seed=0, engine="torch")
    b = Crossbar(64, 32, device=DEVICES / "mp_reram_es.toml", seed=0, engine="torch")
    for _ in range(4):
        u = torch.randn(32, 64, generator=g)
        a.update_rows(u, 0.05)
        b.update(torch.eye(64), u.T, 0.05)
    assert torch.allclose(a.engine.cell.chi, b.engine.cell.chi, atol=1e-6)
    assert torch.equal(a.get_weights(), b.get_weights())
    assert a.counters.update_pulses == b.counters.update_pulses > 0


def test_update_rows_rejects_a_wrong_shape():
    xbar = Crossbar(8, 4, device=DEVICES / "idealized.toml", engine="torch")
    with pytest.raises(ValueError, match="shape"):
        xbar.update_rows(torch.zeros(8, 4), 0.1)


def test_moving_a_parent_module_moves_the_torch_engine():
    """FFNet.to(device) reaches the crossbar's engine (nn.Module.to does not call a child's .to)."""
    xbar = Crossbar(8, 4, device=DEVICES / "idealized.toml", engine="torch")
    parent = torch.nn.Sequential(xbar)
    moved = []
    real_to = xbar.engine.to
    xbar.engine.to = lambda dev: moved.append(torch.device(dev)) or real_to(dev)
    xbar.engine.device = torch.device("meta")  # pretend it lives elsewhere
    parent.to("cpu")
    assert moved == [torch.device("cpu")]
    parent.double()  # a dtype change is not a move
    assert moved == [torch.device("cpu")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_analog_ff_step_runs_on_cuda():
    from analogff.ff import FFConfig, FFNet

    net = FFNet([784, 32, 32], layer="analog", device=DEVICES / "ecram.toml",
                config=FFConfig(analog_update="adam")).to("cuda")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 784, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    out = net.train_step(x, y, g)
    assert all(torch.isfinite(torch.tensor(v)) for v in out["layer_losses"])
    assert net.layers[0].xbar.engine.device.type == "cuda"
    assert net.total_counts().read_v2g_W > 0


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("compile", [False, True])
def test_column_conductance_sums_are_the_devices_conductances(path, compile, monkeypatch):
    """The read-energy model's per-row conductance sums (a fused kernel on the torch engine) are
    exactly the sums of conductances(), the G+ and G- of every device, in siemens."""
    monkeypatch.setenv("ANALOGFF_COMPILE", "1" if compile else "0")
    if compile and load_device(path).preset not in ("EcRamPreset", "PCMPreset"):
        pytest.skip("compiled once for a single-device and a pair profile (compilation takes seconds)")
    xbar = Crossbar(20, 12, device=path, seed=0, engine="torch")
    g = torch.Generator().manual_seed(0)
    xbar.set_weights((torch.rand(12, 20, generator=g) * 2 - 1) * 2 * xbar.w_bound)  # some beyond the bounds
    xbar.forward(torch.rand(4, 20, generator=g))
    xbar.update(torch.rand(4, 20, generator=g), torch.randn(4, 12, generator=g) * 0.1, 0.05)
    gp, gm = xbar.conductances()
    want = (gp + gm).sum(0)
    got = xbar._column_conductance_sums()
    assert got.shape == (20,) and got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-6, atol=0), (got, want)


@pytest.mark.parametrize("engine", ENGINES)
def test_forward_on_driven_rows_is_the_full_read_with_the_rest_at_zero(engine):
    dev = ideal_periphery().with_overrides(forward__out_res=-1.0)
    xbar = Crossbar(64, 32, device=dev, seed=0, engine=engine).eval()
    rows = torch.tensor([3, 10, 40, 63])
    x = batch(5, 4)
    full = torch.zeros(5, 64)
    full[:, rows] = x
    y = xbar.forward(x, rows=rows)
    assert torch.allclose(y, full @ xbar.get_weights().T, atol=1e-5)
    c = xbar.counters
    assert (c.mvms, c.dac_conversions, c.adc_conversions, c.device_reads) == (5, 5 * 4, 5 * 32, 2 * 5 * 4 * 32)
    e_rows = c.read_v2g_W
    c.reset()
    xbar.forward(full)  # rows at 0 V draw no read current: the same read energy
    assert abs(xbar.counters.read_v2g_W / e_rows - 1) < 1e-9 and xbar.counters.dac_conversions == 5 * 64


def test_forward_on_driven_rows_counts_its_retries_on_those_rows():
    xbar = Crossbar(64, 8, device=load_device(DEVICES / "ecram.toml"), seed=0)  # ADC bound 20, iterative BM
    xbar.set_weights(torch.full((8, 64), 0.9 * xbar.w_bound * xbar.w_scale))
    xbar.forward(torch.ones(3, 40), rows=torch.arange(40))  # 40 rows x 0.9 bound > 20: retried
    c = xbar.counters
    assert c.mvms > 3 and c.dac_conversions == 40 * c.mvms and c.device_reads == 2 * 40 * 8 * c.mvms


def test_forward_rejects_bad_rows():
    xbar = Crossbar(16, 4, device=load_device(DEVICES / "idealized.toml"), seed=0)
    for rows in ([1, 1], [16], [-1], []):
        with pytest.raises(ValueError, match="rows"):
            xbar.forward(torch.ones(2, max(len(rows), 1)), rows=torch.tensor(rows, dtype=torch.long))
    with pytest.raises(ValueError, match="last dimension 2"):
        xbar.forward(torch.ones(2, 3), rows=torch.tensor([0, 1]))

