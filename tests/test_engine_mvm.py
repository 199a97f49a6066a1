"""The engine's MVM (analogff.engine.mvm): its in-place DAC and ADC stages equal aihwkit's AnalogMVM."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from analogff.devices import list_devices, load_device

DEVICES = Path(__file__).resolve().parents[1] / "devices"
PROFILES = list_devices(DEVICES)
IN, OUT = 64, 32



@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_forward_dac_and_adc_stages_equal_aihwkits(path):
    """The engine's in-place DAC (``_prepare_input``) and ADC quantisation give exactly aihwkit's
    AnalogMVM values, inputs beyond the DAC range, zeros and NaN included."""
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

    from analogff.engine.mvm import _analog_mvm

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


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_fused_dac_and_adc_kernels_equal_aihwkits_stages(path):
    """A plain read's fused kernels (the engine's forward path) give exactly aihwkit's DAC and, without
    output noise, its ADC and bound test: NaN, zeros, inputs beyond the DAC range and an output
    vector past the ADC bound included."""
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

    from analogff.engine.mvm import _k_adc, _k_dac, _step, plain_io

    io = load_device(path).rpu_config().forward
    if not plain_io(io):
        pytest.skip("not a plain read: aihwkit's own path")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, IN, generator=g) * 3
    x[0, :4] = torch.tensor([0.0, -0.0, float("nan"), 1.0])
    scale = torch.rand(16, 1, generator=g) + 0.2
    want = AnalogMVM._prepare_input(x, scale, True, False, io)
    got = _k_dac(x, scale, _step(float(io.inp_res), float(io.inp_bound)), float(io.inp_bound))
    assert torch.equal(want.isnan(), got.isnan()) and torch.equal(want.nan_to_num(), got.nan_to_num())
    y = torch.randn(16, OUT, generator=g) * 15
    y[3] = 40.0  # one vector past the ADC bound
    y[5, 0] = float("nan")
    quiet = copy.deepcopy(io)
    quiet.out_noise = 0.0
    _, want = AnalogMVM._finalize_output(y.clone(), quiet)
    bound = float(io.out_bound) if io.out_bound > 0 else float("inf")
    passed, got = _k_adc(y, torch.tensor(7), 0.0, _step(float(io.out_res), float(io.out_bound)), bound)
    assert torch.equal(want.isnan(), got.isnan()) and torch.equal(want.nan_to_num(), got.nan_to_num())
    step = _step(float(io.out_res), float(io.out_bound))
    q = torch.round(y / step) * step if step > 0 else y
    assert torch.equal(passed, q.abs().amax(1) <= bound)  # the per-vector bound test, NaN fails
    assert not bool(passed[5]) and (io.out_bound <= 0 or not bool(passed[3]))


def test_fused_output_noise_is_gaussian_of_the_configured_std_and_fresh_per_read():
    """The forward's output noise (counter-based normals): mean 0, the profile's ``out_noise``
    std, independent between reads and between outputs; seeded: the same stream reruns exactly."""
    dev = load_device(DEVICES / "ecram.toml").with_overrides(forward__out_res=-1.0, forward__out_bound=1e6,
                                                                forward__inp_res=-1.0)
    from analogff.crossbar import Crossbar

    def reads(seed: int):
        xbar = Crossbar(250, 256, device=dev, seed=seed, engine="torch")  # < 65536 devices: eager kernels
        x = torch.zeros(400, 250)
        x[:, 0] = 1.0  # abs-max 1: the read is column 0 of W plus the output noise
        w0 = xbar.engine.cell.weights()[:, 0]
        return torch.stack([xbar.engine.forward(x) - w0 for _ in range(2)])

    noise = reads(0)
    sigma = float(dev.rpu_config().forward.out_noise)
    assert abs(float(noise.mean())) < 4 * sigma / noise.numel() ** 0.5
    assert abs(float(noise.std()) / sigma - 1) < 0.02
    flat = noise.reshape(2, -1)
    assert abs(float(torch.corrcoef(flat)[0, 1])) < 0.01  # two reads of the same input
    assert abs(float(torch.corrcoef(torch.stack([noise[0, :, 0], noise[0, :, 1]]))[0, 1])) < 0.15
    assert torch.equal(noise, reads(0)) and not torch.equal(noise, reads(1))


@pytest.mark.parametrize("engine", ["torch", "aihwkit"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_vector_below_the_smallest_normal_float_reads_as_zero_not_nan(direction, engine):
    """Noise management divides a vector by its abs-max; one whose abs-max is subnormal (below
    float32's smallest normal, ~1.2e-38: an FF error that underflowed) made the scale 1 / amax
    infinite and the read NaN (found by pairwise learning on ecram, Fashion-MNIST). Such a vector
    is read as a zero vector, as aihwkit reads zeros."""
    from analogff.crossbar import Crossbar

    g = torch.Generator().manual_seed(3)
    v = torch.randn(6, IN if direction == "forward" else OUT, generator=g)
    v[2] = 2e-39 * torch.sign(torch.randn(v.shape[1], generator=g))  # subnormal, like the failing errors,
    v[2, ::3] = 0.0  # with the zeros of units that were off (0 x inf was the NaN)
    v[4] = 0.0
    xbar = Crossbar(IN, OUT, device=load_device(DEVICES / "ecram.toml"), seed=0, engine=engine)
    with torch.no_grad():
        xbar.set_weights(torch.randn(OUT, IN, generator=torch.Generator().manual_seed(4)) * 0.1)
    out = xbar.eval()(v) if direction == "forward" else xbar.backward(v)
    assert torch.isfinite(out).all()
    assert out[2].abs().max() <= out[4].abs().max() * 10 + 1e-6  # noise only, as for the zero vector
    assert out[[0, 1, 3, 5]].abs().max() > 0.05


@pytest.mark.parametrize("nm", ["ABS_MAX", "MAX", "CONSTANT", "NONE"])
@pytest.mark.parametrize("thres", [0.0, 0.5])
def test_noise_management_scale_equals_aihwkits(nm, thres):
    """The noise-management scale (abs-max per vector, without argmax indices) equals aihwkit's,
    NaN and all-zero vectors included."""
    from aihwkit.simulator.parameters.enums import NoiseManagementType
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

    from analogff.engine.mvm import _analog_mvm

    io = load_device(DEVICES / "ecram.toml").rpu_config().forward
    io.nm_thres = thres
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, IN, generator=g)
    x[1] = 0.0
    x[2, 5] = float("nan")
    want = AnalogMVM._compute_noise_management(x, NoiseManagementType[nm], io)
    got = _analog_mvm()._compute_noise_management(x, NoiseManagementType[nm], io)
    if isinstance(want, torch.Tensor):
        assert got.shape == want.shape and torch.equal(want.isnan(), got.isnan())
        assert torch.equal(want.nan_to_num(), got.nan_to_num())
    else:
        assert got == want


def test_seeded_read_touches_only_the_cpu_generator_and_formats_no_stack(monkeypatch):
    """``_seeded`` seeds and restores the generator the read draws from, and nothing else:
    ``torch.manual_seed`` would queue a seed for every uninitialised accelerator backend, each
    with a formatted stack trace (a third of a millisecond per read). The read's noise is the same
    for the same engine stream, and the global generator is as it was, after an error too."""
    import traceback

    from analogff.engine.mvm import _seeded
    from analogff.engine.rng import _Rng

    torch.manual_seed(3)
    before = torch.default_generator.get_state()
    calls = []
    real = traceback.format_stack
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    draws = []
    for _ in range(2):
        with _seeded(_Rng(7, torch.device("cpu"))):
            draws.append(torch.randn(4))
    assert calls == []
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.default_generator.get_state(), before)
    with pytest.raises(RuntimeError):
        with _seeded(_Rng(7, torch.device("cpu"))):
            raise RuntimeError("inside the read")
    assert torch.equal(torch.default_generator.get_state(), before)
