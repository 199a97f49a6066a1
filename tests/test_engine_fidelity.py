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
torch.compile check, in tests/test_engine.py, is opt-in: ANALOGFF_TEST_COMPILE=1, ~35 s).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from analogff.crossbar import AihwkitEngine, Crossbar
from analogff.devices import list_devices, load_device
from analogff.engine import TorchPulsedEngine

DEVICES = Path(__file__).resolve().parents[1] / "devices"
PROFILES = list_devices(DEVICES)
IN, OUT, B = 64, 32, 16


def _aihwkit_tile(path: Path, seed: int) -> AihwkitEngine:
    """An aihwkit tile with the devices (construction seed) and weights of ``seed``; its pulses, and
    the write noise of a profile that has it, are clock-seeded."""
    a = AihwkitEngine(IN, OUT, load_device(path).rpu_config(), seed)
    g = torch.Generator().manual_seed(100 + seed)
    a.set_weights((torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.3)
    return a


def _pair(path: Path, seed: int) -> tuple[AihwkitEngine, TorchPulsedEngine]:
    """An aihwkit tile and a torch engine with identical device parameters and weights."""
    a = _aihwkit_tile(path, seed)
    t = TorchPulsedEngine(IN, OUT, load_device(path).rpu_config(), seed)
    t.load_device_state(a.device_state(), weights=a.get_weights())
    assert torch.equal(a.get_weights(), t.get_weights())
    return a, t


def _hidden(state: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """What the pulses act on: persistent weights (write noise), or both devices of a pair."""
    if "hidden_weights_1" in state:
        return torch.stack([state["hidden_weights_1"], state["hidden_weights_0"]]).cpu()
    return state.get("persistent_weights", weights).cpu().clone()  # the engine's tensors change in place


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
    """Even columns are pushed down, odd ones up, until (most) devices sit at their bounds.

    aihwkit's side is the mean of 4 tiles built alike (the same devices and weights; their pulses
    and write noise are clock-seeded): one ReRAM SB tile's mean distance to the bounds scatters by
    0.0044 of the range run to run, its fraction near a bound by 0.045 (150 runs each), so a single
    tile left the tolerances below now and then (0.063 against the engine's 0.046 once in CI)."""
    a, t = _pair(path, 0)
    tiles = [a] + [_aihwkit_tile(path, 0) for _ in range(3)]
    g = torch.Generator().manual_seed(7)
    sign = torch.where(torch.arange(OUT) % 2 == 0, 1.0, -1.0)
    for _ in range(25):
        x = torch.rand(B, IN, generator=g)
        d = (torch.rand(B, OUT, generator=g) * 0.5 + 0.5) * sign
        for tile in tiles:
            tile.update(x, d, 0.05)
        t.update(x, d, 0.05)
    st = t.device_state()
    ht = _hidden(st, t.get_weights())
    cfg = load_device(path).rpu_config().device
    dev = cfg.unit_cell_devices[0] if hasattr(cfg, "unit_cell_devices") else getattr(cfg, "device", cfg)
    span = float(dev.w_max) - float(dev.w_min)
    # chopped TTv2's fast array changes sign with its choppers, so its mean after these 25 steps
    # swings from run to run in aihwkit itself: two aihwkit tiles with the same parameters and
    # inputs (only their clock-seeded pulses differ) were up to 0.045 of the span apart on
    # reram_sb_cttv2 (30 runs) and 0.025 on ecram_cttv2 (15 runs), above this test's 0.04 for the
    # other profiles; the engine against aihwkit, in the same runs: up to 0.029 and 0.023
    from analogff.engine.cells.transfer import algorithm_of

    rel = 0.06 if algorithm_of(cfg) == "chopped" else 0.04
    for cols in (slice(0, None, 2), slice(1, None, 2)):
        ma = sum(float(_hidden(tile.device_state(), tile.get_weights())[..., cols, :].mean()) for tile in tiles)
        diff = abs(ma / len(tiles) - float(ht[..., cols, :].mean()))
        assert diff <= rel * span, (diff, span)
    per_tile = [_saturation(tile.device_state(), tile.get_weights()) for tile in tiles]
    fa, da = (sum(v) / len(tiles) for v in zip(*per_tile))
    ft, dt = _saturation(st, t.get_weights())
    assert abs(da - dt) <= 0.01 + 0.1 * da, (da, dt)
    assert abs(fa - ft) <= 0.12, (fa, ft)  # many devices sit at the band's edge: +-0.05 run to run (one tile)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_ff_batch_order_matches_aihwkit(path):
    """An FF batch is [positive; negative]: every device gets hundreds of pulses one way, then as
    many the other way, and with state-dependent steps or bounds the order sets where it ends
    (aihwkit pulses sample by sample). Inputs are non-negative with a constant bias input (the
    devices that get the most pulses). Measured: mean and spread within 2-7 %, bias column within
    its noise (on 785 x 64 with real MNIST: within 12 %, ReRAM ES, whose noise is 5 steps per pulse
    on a strongly nonlinear step). Without the ordered parts the torch engine missed the drift of
    the soft-bounds and bounded devices entirely.

    aihwkit seeds its generator from the clock, so its side is a random draw: where the mean change
    is near zero (capacitor_agad: -0.0009 with a spread of 0.016) about one aihwkit run in ten lands
    outside the band (measured: -0.0022). The mean is then compared with the median of seven
    aihwkit runs; the torch engine's side is seeded and the same in every run. (Thirty aihwkit
    runs of capacitor_agad: mean -0.0009, run-to-run standard deviation 0.00055, the engine at
    -0.00092; with the median of three this test failed once in 28 runs of this file.)"""
    def run(pair):
        a, t = pair
        g = torch.Generator().manual_seed(11)
        ha0, ht0 = _hidden(a.device_state(), a.get_weights()), _hidden(t.device_state(), t.get_weights())
        for _ in range(2):
            x = torch.rand(2 * B, IN, generator=g) * (torch.rand(2 * B, IN, generator=g) < 0.3)
            x[:, -1] = 1.0
            mag = torch.rand(2 * B, OUT, generator=g) * (torch.rand(2 * B, OUT, generator=g) < 0.6)
            d = torch.cat([-mag[:B], mag[B:]]) * 3  # positive half raises, negative half lowers
            a.update(x, d, 0.05)
            t.update(x, d, 0.05)
        return _hidden(a.device_state(), a.get_weights()) - ha0, _hidden(t.device_state(), t.get_weights()) - ht0

    da, dt = run(_pair(path, 0))
    sa = float(da.std())
    mean_a = float(da.mean())
    if not abs(mean_a - float(dt.mean())) < 0.1 * abs(mean_a) + 0.05 * sa:
        mean_a = sorted([mean_a] + [float(run(_pair(path, 0))[0].mean()) for _ in range(6)])[3]
    assert abs(mean_a - float(dt.mean())) < 0.1 * abs(mean_a) + 0.05 * sa, (mean_a, dt.mean())
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
def test_device_state_uses_aihwkit_names(path):
    a, t = _pair(path, 0)
    assert set(t.device_state()) == set(a.device_state())
    xbar = Crossbar(IN, OUT, device=path, seed=0, engine="torch")
    gp, gm = xbar.conductances()
    assert gp.shape == (OUT, IN) and torch.isfinite(gp).all() and torch.isfinite(gm).all()


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
            h0 = e.device_state()["hidden_weights_0"].clone()
            if name == "torch":
                e.update_rows(u, lr)
            else:
                e.update(torch.eye(n_in), u.T, lr)
            total += float((e.device_state()["hidden_weights_0"] - h0).mean())
        mean[name] = total / reps
    assert mean["torch"] > 0.1
    assert abs(mean["aihwkit"] / mean["torch"] - 1) < 0.035, mean
