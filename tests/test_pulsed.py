"""The fast torch engine against aihwkit's own tiles (engine="aihwkit"), on every device profile.

Both engines get the same device-to-device parameters (the aihwkit tile's hidden parameters are
loaded into the torch engine), the same initial weights and the same inputs and errors; then the
weight trajectories are compared statistically (aihwkit's C++ random generator cannot be seeded, so
the comparison is between distributions, never sample by sample):

* mean update per device, in 8 bins of the ideal SGD update (-lr sum d^T x): the bin means must
  agree within 4.5 standard errors of their difference (random part; aihwkit's devices of one row
  or column share pulse trains, so its standard error is inflated by sqrt(6), measured) plus 6 % of
  the typical update (systematic part: what the aggregate model may cost, and aihwkit's own bias:
  its CPU tile draws every Gaussian from a per-tile table of 32768 numbers whose mean, std 0.0055,
  shifts a ReRAM tile's mean update by 2-3 % given their 3.75-5 steps of noise per pulse,
  ``benchmarks/update_ratio.py --tiles``; measured discrepancies are within noise, <= 3 % of the
  typical update);
* spread of the update per bin (std): within 20 % per bin and 10 % on average (measured 0.93-1.10
  per bin, 0.97-1.03 on average: the std of 512 devices alone scatters by ~3 %);
* saturation after a long push towards the bounds: mean weight of the pushed columns within 4 % of
  the weight range; mean distance to the nearest bound within 10 % (+0.01 of the range); fraction
  of devices within 5 % of the range from a bound within 0.12 (this fraction scatters by +-0.05
  between aihwkit runs; measured discrepancies: mean weight <= 1 %, distance <= 6 %, fraction
  <= 0.04 on average over seeds, the largest for ReRAM SB whose noise is 3.75 steps per pulse);
* forward statistics (same weights): mean output within the noise of 20 repeats, output noise std
  within 10 % (both engines run the preset's DAC/ADC/noise/bound management).

Comparisons use the devices' hidden weights (aihwkit's ``persistent_weights`` where write noise
hides them, both devices of a PCM pair) so that the large write noise of ReRAM does not drown the
signal. Tiles are 64 x 32 with a few updates: the whole file runs in ~10 s on 2 cores (the
torch.compile check is opt-in: ANALOGFF_TEST_COMPILE=1, ~35 s).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch

from analogff.crossbar import AihwkitEngine, Crossbar
from analogff.devices import DeviceProfile, PhysicalParams, list_devices, load_device
from analogff.pulsed import TorchPulsedEngine, expected_pulses, pulse_trains, weight_granularity

DEVICES = Path(__file__).resolve().parents[1] / "devices"
PROFILES = list_devices(DEVICES)
IN, OUT, B = 64, 32, 16


def _pair(path: Path, seed: int) -> tuple[AihwkitEngine, TorchPulsedEngine]:
    """An aihwkit tile and a torch engine with identical device parameters and weights."""
    a = AihwkitEngine(IN, OUT, load_device(path).rpu_config(), seed)
    t = TorchPulsedEngine(IN, OUT, load_device(path).rpu_config(), seed)
    g = torch.Generator().manual_seed(100 + seed)
    a.set_weights((torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.3)
    t.load_device_state(a.device_state(), weights=a.get_weights())
    assert torch.equal(a.get_weights(), t.get_weights())
    return a, t


def _hidden(state: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """What the pulses act on: persistent weights (write noise), or both devices of a pair."""
    if "hidden_weights_1" in state:
        return torch.stack([state["hidden_weights_1"], state["hidden_weights_0"]]).cpu()
    return state.get("persistent_weights", weights).cpu()


def _run(a: AihwkitEngine, t: TorchPulsedEngine, xs, ds, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    ha0, ht0 = _hidden(a.device_state(), a.get_weights()), _hidden(t.device_state(), t.get_weights())
    for x, d in zip(xs, ds):
        a.update(x, d, lr)
        t.update(x, d, lr)
    return (_hidden(a.device_state(), a.get_weights()) - ha0,
            _hidden(t.device_state(), t.get_weights()) - ht0)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_update_statistics_match_aihwkit(path):
    # 8 seeds: aihwkit's own ReRAM ES tile (up/down asymmetry, 5 dw_min of noise per pulse) moves
    # the top bin only ~1.4 run-to-run scatters above 0 after 5 steps; with 2 seeds its mean fell
    # below 0 in ~1 of 12 runs. (More steps do not help: the asymmetric drift then wins.)
    lr, steps = 0.01, 5
    da, dt, ideal = [], [], []
    for seed in range(8):
        a, t = _pair(path, seed)
        g = torch.Generator().manual_seed(seed)
        xs = [torch.rand(B, IN, generator=g) for _ in range(steps)]
        ds = [torch.rand(B, OUT, generator=g) * 2 - 1 for _ in range(steps)]
        ua, ut = _run(a, t, xs, ds, lr)
        da.append(ua.reshape(-1, OUT * IN))
        dt.append(ut.reshape(-1, OUT * IN))
        ideal.append((-lr * sum(d.T @ x for x, d in zip(xs, ds))).reshape(1, -1).expand_as(da[-1]))
    da, dt, ideal = torch.cat(da, 1).flatten(), torch.cat(dt, 1).flatten(), torch.cat(ideal, 1).flatten()
    bins = ideal.argsort().chunk(8)
    ma = torch.stack([da[b].mean() for b in bins])
    mt = torch.stack([dt[b].mean() for b in bins])
    sa = torch.stack([da[b].std() for b in bins])
    st = torch.stack([dt[b].std() for b in bins])
    n = len(bins[0])
    # aihwkit's devices of one row / column share their pulse trains: its bin means scatter ~2.5x
    # more than independent devices would (design effect ~6 on the variance, measured run to run)
    tol = 4.5 * torch.sqrt((6 * sa**2 + st**2) / n) + 0.06 * ma.abs().mean()
    assert ((ma - mt).abs() <= tol).all(), (ma, mt, tol)
    ratio = st / sa
    assert ((ratio - 1).abs() < 0.2).all() and abs(float(ratio.mean()) - 1) < 0.1, ratio
    # the update follows SGD's sign (PCM: the pair's devices only grow, the difference follows)
    if "hidden_weights_1" not in a.device_state():
        assert float(ma[-1]) > 0 > float(ma[0]) and float(mt[-1]) > 0 > float(mt[0])


def _saturation(state: dict[str, torch.Tensor], weights: torch.Tensor) -> tuple[float, float]:
    """(fraction of devices within 5 % of the range from a bound, mean distance to the nearest
    bound in units of the device's range)."""
    if "hidden_weights_1" in state:
        rel = torch.stack([state["hidden_weights_1"] / state["max_bound_1"],
                           state["hidden_weights_0"] / state["max_bound_0"]])
        dist = (1 - rel).clamp(min=0).amin(0)  # the pair saturates when one device is full
    else:
        v = state.get("persistent_weights", weights) + state.get("reference", torch.zeros_like(weights))
        lo, hi = state["min_bound"], state["max_bound"]
        dist = torch.minimum(hi - v, v - lo) / (hi - lo)
    return float((dist < 0.05).float().mean()), float(dist.mean())


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_saturation_matches_aihwkit(path):
    """Even columns are pushed down, odd ones up, until (most) devices sit at their bounds."""
    a, t = _pair(path, 0)
    g = torch.Generator().manual_seed(7)
    sign = torch.where(torch.arange(OUT) % 2 == 0, 1.0, -1.0)
    for _ in range(25):
        x = torch.rand(B, IN, generator=g)
        d = (torch.rand(B, OUT, generator=g) * 0.5 + 0.5) * sign
        a.update(x, d, 0.05)
        t.update(x, d, 0.05)
    sa, st = a.device_state(), t.device_state()
    ha, ht = _hidden(sa, a.get_weights()), _hidden(st, t.get_weights())
    cfg = load_device(path).rpu_config().device
    dev = cfg.unit_cell_devices[0] if hasattr(cfg, "unit_cell_devices") else getattr(cfg, "device", cfg)
    span = float(dev.w_max) - float(dev.w_min)
    for cols in (slice(0, None, 2), slice(1, None, 2)):
        diff = abs(float(ha[..., cols, :].mean()) - float(ht[..., cols, :].mean()))
        assert diff <= 0.04 * span, (diff, span)
    (fa, da), (ft, dt) = _saturation(sa, a.get_weights()), _saturation(st, t.get_weights())
    assert abs(da - dt) <= 0.01 + 0.1 * da, (da, dt)
    assert abs(fa - ft) <= 0.12, (fa, ft)  # many devices sit at the band's edge: +-0.05 run to run


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_ff_batch_order_matches_aihwkit(path):
    """An FF batch is [positive; negative]: every device gets hundreds of pulses one way, then as
    many the other way, and with state-dependent steps or bounds the order sets where it ends
    (aihwkit pulses sample by sample). Inputs are non-negative with a constant bias input (the
    devices that get the most pulses). Measured: mean and spread within 2-7 %, bias column within
    its noise (on 785 x 64 with real MNIST: within 12 %, ReRAM ES, whose noise is 5 steps per pulse
    on a strongly nonlinear step). Without the ordered parts the torch engine missed the drift of
    the soft-bounds and bounded devices entirely."""
    a, t = _pair(path, 0)
    g = torch.Generator().manual_seed(11)
    ha0, ht0 = _hidden(a.device_state(), a.get_weights()), _hidden(t.device_state(), t.get_weights())
    for _ in range(2):
        x = torch.rand(2 * B, IN, generator=g) * (torch.rand(2 * B, IN, generator=g) < 0.3)
        x[:, -1] = 1.0
        mag = torch.rand(2 * B, OUT, generator=g) * (torch.rand(2 * B, OUT, generator=g) < 0.6)
        d = torch.cat([-mag[:B], mag[B:]]) * 3  # positive half raises, negative half lowers
        a.update(x, d, 0.05)
        t.update(x, d, 0.05)
    da = _hidden(a.device_state(), a.get_weights()) - ha0
    dt = _hidden(t.device_state(), t.get_weights()) - ht0
    sa = float(da.std())
    assert abs(float(da.mean()) - float(dt.mean())) < 0.1 * abs(float(da.mean())) + 0.05 * sa, (da.mean(), dt.mean())
    assert abs(float(dt.std()) / sa - 1) < 0.12, (sa, dt.std())
    col_a, col_t = da[..., -1].flatten(), dt[..., -1].flatten()
    ca, ct = float(col_a.mean()), float(col_t.mean())
    se = math.sqrt((float(col_a.var()) + float(col_t.var())) / col_a.numel())  # 32 (PCM: 64) devices
    assert abs(ca - ct) < 0.15 * abs(ca) + 4 * se, (ca, ct, se)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_forward_statistics_match_aihwkit(path):
    a, t = _pair(path, 0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(32, IN, generator=g)
    x[:4] *= 3  # noise management scales these
    reps = 20
    ya = torch.stack([a.forward(x, False) for _ in range(reps)])
    yt = torch.stack([t.forward(x, False) for _ in range(reps)])
    noise_a, noise_t = float(ya.std(0).mean()), float(yt.std(0).mean())
    assert abs(noise_t / noise_a - 1) < 0.1, (noise_a, noise_t)
    # E|N(0, 2 s^2 / reps)| = s sqrt(4 / (pi reps)): the mean outputs differ by noise only
    expect = noise_a * math.sqrt(4 / (math.pi * reps))
    assert float((ya.mean(0) - yt.mean(0)).abs().mean()) < 1.3 * expect
    exact = x @ a.get_weights().T
    err_a, err_t = float((ya.mean(0) - exact).abs().mean()), float((yt.mean(0) - exact).abs().mean())
    assert abs(err_t - err_a) < 0.3 * err_a + 1e-3, (err_a, err_t)


def test_forward_bound_management_is_per_vector_as_aihwkit():
    """Outputs beyond the ADC bound (20) in a few vectors of the batch: the other vectors' output
    noise stays what it is without them, as in aihwkit's C++ tile. (aihwkit's torch AnalogMVM retries
    the whole batch: the other vectors then had twice aihwkit's noise, 0.040 against 0.020.)"""
    a, t = _pair(DEVICES / "ecram.toml", 0)
    g = torch.Generator().manual_seed(5)
    w = (torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.9
    a.set_weights(w)
    t.load_device_state(a.device_state(), weights=a.get_weights())
    x = torch.rand(32, IN, generator=g) * 0.2
    x[:2] = torch.sign(a.get_weights()[0])  # these two vectors drive column 0 past the bound
    assert float((x @ a.get_weights().T).abs().max()) > 20
    reps = 20
    ya = torch.stack([a.forward(x, False) for _ in range(reps)])[:, 2:]
    yt = torch.stack([t.forward(x, False) for _ in range(reps)])[:, 2:]
    noise_a, noise_t = float(ya.std(0).mean()), float(yt.std(0).mean())
    assert abs(noise_t / noise_a - 1) < 0.1, (noise_a, noise_t)
    clip_a = torch.stack([a.forward(x[:2], False) for _ in range(reps)]).mean(0)
    clip_t = torch.stack([t.forward(x[:2], False) for _ in range(reps)]).mean(0)
    assert float(clip_t.abs().max()) > 20 and abs(float(clip_t.abs().max() / clip_a.abs().max()) - 1) < 0.02
    y3 = t.forward(x.reshape(2, 16, IN), False)  # leading dimensions: vectors along the last one
    assert y3.shape == (2, 16, OUT) and torch.isfinite(y3).all()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_forward_dac_and_adc_stages_equal_aihwkits(path):
    """The engine's in-place DAC (``_prepare_input``) and ADC quantisation give exactly aihwkit's
    AnalogMVM values, inputs beyond the DAC range, zeros and NaN included."""
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

    from analogff.pulsed import _analog_mvm

    mvm = _analog_mvm()
    io = load_device(path).rpu_config().forward
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, IN, generator=g) * 3
    x[0, :4] = torch.tensor([0.0, -0.0, float("nan"), 1.0])
    scale = torch.rand(16, 1, generator=g) + 0.2
    for scaling in (True, False):
        want = AnalogMVM._prepare_input(x, scale, scaling, io.inp_asymmetry != 0.0, io)
        got = mvm._prepare_input(x, scale, scaling, io.inp_asymmetry != 0.0, io)
        assert torch.equal(want.isnan(), got.isnan()) and torch.equal(want.nan_to_num(), got.nan_to_num())
    assert torch.isfinite(x[1:]).all()  # the input is left as it was
    y = torch.randn(16, OUT, generator=g) * 15
    y[3] = 40.0  # one vector past the ADC bound
    quiet = copy.deepcopy(io)
    quiet.out_noise = 0.0
    passed_a, want = AnalogMVM._finalize_output(y.clone(), quiet)
    passed, got = mvm._finalize_output(y.clone(), quiet)
    assert torch.equal(want, got)
    if quiet.out_bound > 0 and str(quiet.bound_management).endswith("ITERATIVE"):
        assert not bool(passed[3]) and bool(passed_a) is False
        assert torch.equal(passed, (y.abs() <= quiet.out_bound).all(dim=1))

@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_device_state_uses_aihwkit_names(path):
    a, t = _pair(path, 0)
    assert set(t.device_state()) == set(a.device_state())
    xbar = Crossbar(IN, OUT, device=path, seed=0, engine="torch")
    gp, gm = xbar.conductances()
    assert gp.shape == (OUT, IN) and torch.isfinite(gp).all() and torch.isfinite(gm).all()


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


@pytest.mark.parametrize("preset", ["TikiTakaReRamSBPreset", "ChoppedTTv2IdealizedPreset", "ReRamES2Preset",
                                    "FloatingPointPreset"])
def test_unsupported_presets_are_refused_clearly(preset):
    from analogff.devices import PRESETS

    with pytest.raises(ValueError, match=rf"{preset}.*engine='aihwkit'"):
        TorchPulsedEngine(8, 4, PRESETS[preset](), seed=0)
    profile = DeviceProfile(name="tt", preset=preset, physics=PhysicalParams(0.2, 1e-6, 25e-6, 1e-7, 1e-12))
    with pytest.raises(ValueError, match="engine='aihwkit'"):
        Crossbar(8, 4, device=profile, engine="torch")
    Crossbar(8, 4, device=profile, engine="aihwkit")  # the reference still runs it


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


def test_pcm_row_by_row_mean_update_matches_aihwkit():
    """PCM at training pulse density (about 0.6 pulses per device, one train of BL = 1): the mean
    change of the pulsed device equals aihwkit's within 3.5 % (measured: 0.3 %, s.e. about 0.5 %).
    Counts drawn with more spread than the binomial (n = 2 where one train allows at most 1) gave
    9 % less, since PCM's ExpStep steps shrink fast as the cell fills."""
    n_in, n_out, reps, lr = 128, 64, 500, 0.02
    a = AihwkitEngine(n_in, n_out, load_device(DEVICES / "pcm.toml").rpu_config(), 0)
    t = TorchPulsedEngine(n_in, n_out, load_device(DEVICES / "pcm.toml").rpu_config(), 0)
    a.set_weights(torch.zeros(n_out, n_in))
    t.load_device_state(a.device_state(), weights=a.get_weights())
    w0, u = torch.full((n_out, n_in), 0.05), torch.ones(n_out, n_in)  # u > 0: G- (device 0) up
    mean = {}
    for name, e in (("aihwkit", a), ("torch", t)):
        total = 0.0
        for _ in range(reps):
            e.set_weights(w0)
            h0 = e.device_state()["hidden_weights_0"]
            if name == "torch":
                e.update_rows(u, lr)
            else:
                e.update(torch.eye(n_in), u.T, lr)
            total += float((e.device_state()["hidden_weights_0"] - h0).mean())
        mean[name] = total / reps
    assert mean["torch"] > 0.1
    assert abs(mean["aihwkit"] / mean["torch"] - 1) < 0.035, mean


def test_small_flat_subsets_run_eagerly(monkeypatch):
    """Compiled kernels: a small flat subset of devices (sparse refresh / transfer) never reaches
    torch.compile (sizes 0 and 1 would recompile, seconds each on CUDA); full tiles do."""
    from analogff import pulsed

    compiled: list[str] = []

    def fake_compile(fn, dynamic=True):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(pulsed.torch, "compile", fake_compile)
    monkeypatch.setattr(pulsed._Kernels, "_compiled", {})
    k = pulsed._Kernels(compile=True)
    for n in (0, 1, 7):  # flat subsets: eager
        k("_log1p_ratio", torch.rand(n))
    assert compiled == []
    k("_log1p_ratio", torch.rand(3, 5))  # a tile (2-D): compiled
    k("_log1p_ratio", torch.rand(pulsed._COMPILE_MIN_DEVICES))  # a big flat subset: compiled
    assert compiled == ["_log1p_ratio"]
    assert torch.allclose(k("_log1p_ratio", torch.tensor([0.0, 1.0])), torch.tensor([1.0, math.log(2.0)]))


@pytest.mark.parametrize("name", ["idealized", "reram_sb", "pcm", "capacitor"])
def test_rowwise_moments_equal_the_identity_batch(name):
    """The element-wise row-by-row moments are exactly the GEMM moments of the batch x = I, d = u^T."""
    from analogff.pulsed import _Rng, _coincidence_moments, _rowwise_moments, weight_granularity

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


@pytest.mark.parametrize("name", ["reram_es", "mp_reram_es"])
def test_exp_step_one_sign_run_equals_both_runs(name):
    """A transfer gives each device pulses of one sign: the ExpStep kernel's single run of that sign
    (``one_sign``) ends exactly where the up run followed by the (empty) down run does."""
    from analogff.pulsed import _k_exp, _rowwise_moments, _Rng

    xbar = Crossbar(IN, OUT, device=DEVICES / f"{name}.toml", seed=0, engine="torch")
    arr = xbar.engine.cell.arr
    g = torch.Generator().manual_seed(3)
    xbar.set_weights((torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.5)
    u = torch.randn(OUT, IN, generator=g)
    mu_u, mu_d, m2_u, m2_d, sc = _rowwise_moments(u, 40 * arr.p["dwmin_up"].mean().item(), xbar.engine.cell.up,
                                                  weight_granularity(arr.cfg))
    assert bool(((mu_u > 0) & (mu_d > 0)).sum() == 0) and float(mu_u.sum()) > 0 and float(mu_d.sum()) > 0
    bits = _Rng(0, torch.device("cpu")).bits((OUT, IN))
    A_up, A_down, g_up, g_down, es_b = arr.es
    c = arr.cfg
    kw = dict(A_up=A_up, A_down=A_down, g_up=g_up, g_down=g_down, es_b=es_b, sigma=arr.sigma, add=float(c.dw_min_std_add),
              slope=float(c.dw_min_std_slope), cplx=arr.complex_noise, wn=arr.write_noise, persistent=arr.persistent,
              has_decay=False)
    args = (arr.hidden, arr.w, mu_u, mu_d, m2_u, m2_d, sc, bits, arr.p["dwmin_up"], arr.p["dwmin_down"], arr.zc,
            arr.bmin, arr.bmax, arr.active, arr.p["decay_scales"], arr.p["reset_bias"])
    one = _k_exp(*args, up_first=True, one_sign=True, **kw)
    for up_first in (True, False):
        both = _k_exp(*args, up_first=up_first, one_sign=False, **kw)
        assert torch.equal(one[0], both[0]) and torch.equal(one[1], both[1]) and float(one[2]) == float(both[2])
    assert not torch.equal(one[0], arr.hidden)  # the pulses moved the devices


def test_pcm_pair_kernel_equals_two_device_kernels():
    """A row-by-row transfer pulses one device of each PCM pair: the pair kernel (one pass, the same
    random draws) gives exactly what the two device kernels give."""
    from analogff.pulsed import _rowwise_moments

    xbar = Crossbar(IN, OUT, device=DEVICES / "pcm.toml", seed=0, engine="torch")
    cell, rng = xbar.engine.cell, xbar.engine.rng
    plus, minus = cell.devs[1], cell.devs[0]
    assert plus.pairs_with(minus)
    g = torch.Generator().manual_seed(4)
    xbar.set_weights((torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.5)
    u = torch.randn(OUT, IN, generator=g)
    mu_u, mu_d, m2_u, m2_d, sc = _rowwise_moments(u, 3 * weight_granularity(plus.cfg), cell.up, cell.gran)
    start = (plus.hidden.clone(), minus.hidden.clone(), rng.get_state())
    n_two = plus.pulse(mu_u, None, m2_u, None, rng, m2_scale=sc, post=True)
    n_two += minus.pulse(mu_d, None, m2_d, None, rng, m2_scale=sc, post=True)
    two = (plus.hidden.clone(), minus.hidden.clone())
    plus.set_apparent(start[0]), minus.set_apparent(start[1])
    plus.hidden, minus.hidden = start[0].clone(), start[1].clone()
    rng.set_state(start[2])
    n_one = plus.pulse_pair(minus, mu_u, mu_d, m2_u, m2_d, rng, m2_scale=sc)
    assert n_one == n_two > 0
    assert torch.equal(plus.hidden, two[0]) and torch.equal(minus.hidden, two[1])
    assert not torch.equal(two[0], start[0]) and not torch.equal(two[1], start[1])  # both devices moved


@pytest.mark.parametrize("name", ["reram_es", "pcm"])
def test_exp_step_devices_without_range_stay_put(name):
    """aihwkit's ExpStep device updates only where max_bound > min_bound (rpu_expstep_device.cpp);
    the kernels read that from the ``active`` 0 / 1 mask (a float: compiled CPU kernels load bool
    tensors slowly), and a device without range keeps its weight while the others move."""
    xbar = Crossbar(IN, OUT, device=DEVICES / f"{name}.toml", seed=0, engine="torch")
    cell = xbar.engine.cell
    arrs = list(cell.devs) if hasattr(cell, "devs") else [cell.arr]
    g = torch.Generator().manual_seed(5)
    xbar.set_weights((torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.3)
    dead = torch.zeros(OUT, IN, dtype=torch.bool)
    dead[::3, ::2] = True
    for arr in arrs:
        arr.p["max_bound"] = torch.where(dead, arr.p["min_bound"], arr.p["max_bound"])
        arr._derive()
        assert arr.active.dtype == torch.float32 and torch.equal(arr.active == 0, dead)
    before = [arr.hidden.clone() for arr in arrs]
    u = torch.randn(OUT, IN, generator=g)
    xbar.engine.update_rows(u, 20 * float(arrs[0].p["dwmin_up"].mean()))
    moved = torch.zeros(OUT, IN, dtype=torch.bool)
    for arr, h0 in zip(arrs, before):
        assert torch.equal(arr.hidden[dead], h0[dead])
        moved |= arr.hidden != h0
    assert moved[~dead].float().mean() > 0.3


def test_poisson_counts_skip_subnormal_terms_without_changing_a_count():
    """``_poisson_small`` drops terms below 1e-20 (and lam below 1e-10), which keeps its recursion out
    of subnormal floats (slow on x86); its counts equal the full recursion's for lam from 1e-30 to 2,
    with the uniforms placed on and just above every partial sum of the CDF, where a dropped term
    that mattered would flip a count."""
    from analogff.pulsed import _POISSON_MAX, _POISSON_TERMS, _poisson_small

    def full(lam: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pk = torch.exp(-lam)
        cdf, sums = pk, [pk]
        n = (u > cdf).to(torch.float32)
        for k in range(1, _POISSON_TERMS):
            pk = pk * lam / k
            cdf = cdf + pk
            sums.append(cdf)
            n = n + (u > cdf).to(torch.float32)
        return n, sums

    g = torch.Generator().manual_seed(0)
    lam = torch.cat([torch.logspace(-30, math.log10(_POISSON_MAX), 3000), torch.rand(3000, generator=g) * _POISSON_MAX,
                     torch.zeros(1)])
    _, sums = full(lam, torch.zeros_like(lam))
    us = [torch.rand(lam.shape, generator=g)]
    for s in sums:
        us += [s, torch.nextafter(s, torch.ones_like(s)), torch.nextafter(s, torch.zeros_like(s))]
    lam_all, u_all = lam.repeat(len(us)), torch.cat(us).clamp(max=1 - 2**-24)
    want, _ = full(lam_all, u_all)
    assert torch.equal(_poisson_small(lam_all, u_all), want)
    assert float(want.max()) >= 5 and float(want.min()) == 0
    # the guard is what keeps subnormals out: the full recursion makes them on small lam
    tiny = torch.finfo(torch.float32).tiny
    pk, sub = torch.ones(1), False
    for k in range(1, _POISSON_TERMS):
        pk = pk * 1e-7 / k
        sub |= bool((pk > 0) & (pk < tiny))
    assert sub
