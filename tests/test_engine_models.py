"""Device models (analogff.engine.models): the ExpStep kernels, the PCM pair kernel, the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from analogff.crossbar import Crossbar
from analogff.engine import weight_granularity

DEVICES = Path(__file__).resolve().parents[1] / "devices"
IN, OUT = 64, 32



@pytest.mark.parametrize("name", ["reram_es", "mp_reram_es"])
def test_exp_step_one_sign_run_equals_both_runs(name):
    """A transfer gives each device pulses of one sign: the ExpStep kernel's single run of that sign
    (``one_sign``) ends exactly where the up run followed by the (empty) down run does."""
    from analogff.engine.models.exp_step import _k_exp
    from analogff.engine.moments import _rowwise_moments
    from analogff.engine.rng import _Rng

    xbar = Crossbar(IN, OUT, device=DEVICES / f"{name}.toml", seed=0, engine="torch")
    arr = xbar.engine.cell.arr
    g = torch.Generator().manual_seed(3)
    xbar.set_weights((torch.rand(OUT, IN, generator=g) * 2 - 1) * 0.5)
    u = torch.randn(OUT, IN, generator=g)
    mu_u, mu_d, m2_u, m2_d, sc = _rowwise_moments(u, 40 * arr.p["dwmin_up"].mean().item(), xbar.engine.cell.up,
                                                  weight_granularity(arr.cfg))
    assert bool(((mu_u > 0) & (mu_d > 0)).sum() == 0) and float(mu_u.sum()) > 0 and float(mu_d.sum()) > 0
    bits = _Rng(0, torch.device("cpu")).key()
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
        assert torch.equal(one[0], both[0]) and torch.equal(one[1], both[1]) and torch.equal(one[2], both[2])
    assert not torch.equal(one[0], arr.hidden)  # the pulses moved the devices


def test_pcm_pair_kernel_equals_two_device_kernels():
    """A row-by-row transfer pulses one device of each PCM pair: the pair kernel (one pass, the same
    random draws) gives exactly what the two device kernels give."""
    from analogff.engine.moments import _rowwise_moments

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
    from analogff.engine.models.exp_step import _POISSON_MAX, _POISSON_TERMS, _poisson_small

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


def test_registry_finds_every_shipped_model_and_lists_itself_when_refusing():
    """Every shipped profile's device finds its model through the registry keyed by the aihwkit
    class; an unregistered model is refused with a message listing the registry."""
    from aihwkit.simulator.configs.devices import PowStepDevice

    from analogff.devices import list_devices, load_device
    from analogff.engine import MODELS, TorchPulsedEngine
    from analogff.engine.models import model_for

    for path in list_devices(DEVICES):
        cell = TorchPulsedEngine(8, 4, load_device(path).rpu_config(), seed=0).cell
        for arr in (list(cell.devs) if hasattr(cell, "devs") else [cell.arr]):
            assert arr.kind in MODELS and arr.model.name == arr.kind
    with pytest.raises(ValueError, match=r"PowStepDevice is not implemented \(supported: ConstantStepDevice.*"
                                         r"ExpStepDevice, .*OneSidedUnitCell.*\).*engine='aihwkit'"):
        model_for(PowStepDevice(), "here")


@pytest.mark.parametrize("name", ["ecram", "reram_sb", "idealized", "capacitor_cttv2"])
def test_affine_pulse_on_a_subset_reads_in_place_and_equals_the_gathered_kernel(name):
    """``DeviceArray.pulse(..., index=)`` on an affine model runs :func:`_k_affine_at`, which reads the
    devices where they are; it must equal gathering them first and running :func:`_k_affine` (the
    path it replaced) bit for bit, and leave every other device as it was."""
    from analogff.devices import load_device
    from analogff.engine.device_array import DeviceArray
    from analogff.engine.kernels import Kernels
    from analogff.engine.models.affine import _k_affine
    from analogff.engine.rng import _Rng

    cfg = load_device(DEVICES / f"{name}.toml").rpu_config().device
    cfg = cfg.unit_cell_devices[1] if hasattr(cfg, "unit_cell_devices") else cfg
    arr = DeviceArray(cfg, (OUT, IN), _Rng(1, torch.device("cpu")), name, Kernels(False))
    g = torch.Generator().manual_seed(4)
    arr.set_weights((torch.rand(OUT, IN, generator=g) - 0.5) * 0.4, _Rng(2, torch.device("cpu")))
    index = torch.randperm(OUT * IN, generator=g)[: OUT * IN // 3].sort().values
    mu_u = torch.rand(index.numel(), generator=g) * 3
    mu_d = torch.where(torch.rand(index.numel(), generator=g) < 0.5, mu_u, 0.0)
    mu_u = mu_u - mu_d  # one sign per device, as a transfer's
    m2_u, m2_d = mu_u * 0.2, mu_d * 0.2
    before_h, before_w = arr.hidden.clone(), arr.w.clone()
    n = arr.pulse(mu_u, mu_d, m2_u, m2_d, _Rng(3, torch.device("cpu")), index=index, one_sign=True)

    def at(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).index_select(0, index)

    ref, consts, flags = arr.model._device_args(arr, at, False)
    h, w, n_want = _k_affine(at(before_h), at(before_w), ref, mu_u, mu_d, m2_u, m2_d, 1.0,
                             _Rng(3, torch.device("cpu")).key(), *consts, **flags)
    assert torch.equal(arr.hidden.reshape(-1)[index], h) and torch.equal(arr.w.reshape(-1)[index], w)
    assert n == float(n_want.sum()) and n > 0
    rest = torch.ones(OUT * IN, dtype=torch.bool)
    rest[index] = False
    assert torch.equal(arr.hidden.reshape(-1)[rest], before_h.reshape(-1)[rest])
    assert not torch.equal(arr.hidden.reshape(-1)[index], before_h.reshape(-1)[index])


@pytest.mark.parametrize("name", ["reram_sb_cttv2", "pcm"])
def test_indexed_writes_go_in_place(name):
    """A write onto some devices (a transfer onto C, a refresh's resets) changes the array's own
    tensors in place: no copy of the whole array per write (0.6-1 ms each on 784 x 500), and the
    version bump that the pair's cached difference checks."""
    from analogff.devices import load_device
    from analogff.engine.device_array import DeviceArray
    from analogff.engine.kernels import Kernels
    from analogff.engine.rng import _Rng

    cfg = load_device(DEVICES / f"{name}.toml").rpu_config().device
    cfg = cfg.unit_cell_devices[1] if hasattr(cfg, "unit_cell_devices") else cfg
    arr = DeviceArray(cfg, (OUT, IN), _Rng(1, torch.device("cpu")), name, Kernels(False))
    g = torch.Generator().manual_seed(4)
    arr.set_weights((torch.rand(OUT, IN, generator=g) - 0.5) * 0.4, _Rng(2, torch.device("cpu")))
    index = torch.randperm(OUT * IN, generator=g)[:40].sort().values
    mu = torch.rand(40, generator=g) * 3
    ptrs, version = (arr.hidden.data_ptr(), arr.w.data_ptr()), arr.hidden._version
    before = arr.hidden.clone()
    arr.pulse(mu, None, mu * 0.2, None, _Rng(3, torch.device("cpu")), index=index)
    assert (arr.hidden.data_ptr(), arr.w.data_ptr()) == ptrs and arr.hidden._version > version
    assert not torch.equal(arr.hidden, before)
    if not arr.persistent:  # a device with write noise cannot be reset (aihwkit refuses it too)
        version = arr.hidden._version
        arr.reset_at(index, _Rng(4, torch.device("cpu")))
        assert arr.hidden.data_ptr() == ptrs[0] and arr.hidden._version > version and arr.w is arr.hidden
