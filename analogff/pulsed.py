"""Pulsed-update physics in batched torch: aihwkit's stochastic pulse trains, in aggregate.

aihwkit updates ``w <- w - lr * d^T x`` by streaming, for each sample, ``BL`` stochastic pulses on
every row (probability ``B * |x_i|``) and every column (probability ``A * |d_j|``); a device moves by
one step of its device model where a row pulse and a column pulse coincide, down if ``x_i d_j > 0``
and up otherwise. The pulse-train constants follow aihwkit's C++
(``PulsedUpdateMetaParameter::calculateBlAB`` / ``performUpdateManagement`` in
``rpu_pulsed_meta_parameter.cpp``, ``SparseBitLineMaker::makeCounts``), with the device's
``weight_granularity`` (``calcWeightGranularity``, see :func:`weight_granularity`):

* update management is always on when bit-line management is (``PulsedUpdateMetaParameter::initialize``);
* ``k = lr * max|x| * um_grad_scale * max|d| / granularity``;
* with ``update_bl_management``: ``BL = min(ceil(k), desired_bl)`` and ``A = B = sqrt(lr / (granularity * BL))``;
  without it, ``BL = desired_bl`` (or, when ``granularity * desired_bl < lr`` and ``fixed_bl`` is off,
  ``BL = ceil(lr / granularity)`` with ``A = B = 1``);
* with update management: ``d_val = um_grad_scale * max|d|`` (times ``desired_bl / k`` when
  ``k > desired_bl``), ``A *= sqrt(max|x| / d_val)``, ``B *= sqrt(d_val / max|x|)``;
* probabilities ``p_x = B |x|``, ``p_d = A |d|`` (rounded to ``update.res`` when set), clipped to 1.

One sample gives a device ``Binomial(BL, p_x p_d)`` coincidences, all of one sign. The expected
number of coincidences of one sample is ``BL * sum_i p_x,i * sum_j p_d,j`` (:func:`expected_pulses`):
that is how analogff counts the aihwkit engine's programming pulses on CPU, where aihwkit's own
pulse counters do not exist.

:class:`TorchPulsedEngine` is the fast engine of :class:`analogff.crossbar.Crossbar`
(``engine="torch"``). Forward and backward MVMs are aihwkit's own pure-torch
``AnalogMVM`` (DAC/ADC, output noise, noise and bound management; the backward without bound
management, as aihwkit's C++ forces), with iterative bound management retrying each clipping vector
alone, as aihwkit's C++ tiles do (:func:`_analog_mvm`). The update applies a mini-batch in two halves, in order
(aihwkit pulses sample after sample, and where steps depend on the weight or devices reach their
bounds the order matters: an FF batch is [positive; negative], hundreds of pulses one way, then
as many the other way). Per part it

1. computes the moments of the coincidence counts of every device with matrix products: the mean
   ``sum_b BL_b p_x p_d`` of the coincidences that lower and that raise the weight (x split by sign,
   d split by sign: one GEMM for non-negative x) and the binomial correction ``sum_b BL_b p^2``
   (variance ``mu - m2``; a GEMM over at most 64 samples of the batch, scaled: unbiased);
2. draws the pulses: a device is pulsed with probability ``q = min(mu_up + mu_down, 1)`` and then
   gets ``mu / q`` pulses of each sign (exact mean; whole pulses below one pulse per batch); the
   count variance this does not carry (and the covariance of the two signs) is added as Gaussian
   weight noise on the pulsed devices. The PCM model instead draws integer counts,
   ``floor(mu - var + u) + Poisson(var)``, because its steps are large and strongly nonlinear;
3. applies them with the device model in closed form (below): the deterministic end point, the
   cycle-to-cycle noise of all pulses (sum of the per-pulse variances, contracted where the model
   pulls towards a fixed point), and aihwkit's clipping at the device's bounds after *every*
   pulse, which is a reflection of the noisy path: the end point loses the path's overshoot past the
   bound, drawn from the maximum of a Brownian bridge with the discrete-monitoring correction of
   Broadie, Glasserman & Kou (1997); write noise is redrawn on every pulsed device;
4. then the once-per-batch steps of aihwkit's ``post_update_step`` (decay with ``lifetime``,
   diffusion), the PCM refresh or the mixed-precision transfer.

All randomness comes from the engine's ``torch.Generator`` (seeded by ``seed``); the per-device
draws are 63 random bits per device and batch, turned into a uniform and two normals inside the
kernels. Steps 2-3 are pure element-wise kernels, fused with ``torch.compile`` on big tiles
(``compile=``, ``ANALOGFF_COMPILE``), eager otherwise (same numbers up to float rounding).

Device models (``aihwkit/simulator/configs/devices.py``, C++ ``rpu_*_device.cpp``); the
device-to-device parameters are drawn as ``PulsedRPUDevice::populate`` and the models' populate do
(``dw_min_dtod`` (normal or log-normal), ``up_down(_dtod)``, ``w_max/min(_dtod)`` with
``enforce_consistency``, slopes ``gamma_*(_dtod)``, ``reset(_dtod)``, ``lifetime(_dtod)``, ...):

* ``ConstantStepDevice``: ``w += n_up dw_up - n_down dw_down``, noise ``dw_min_std * step`` per pulse.
* ``LinearStepDevice`` / ``SoftBoundsDevice`` / ``SoftBoundsReferenceDevice``: the step is affine in
  ``w`` (``up: w += slope_up w + dw_up``, ``down: w -= slope_down w + dw_down``; soft bounds: slopes
  ``-dw/bound``; the reference device works on ``w + reference``), so n pulses of one sign approach
  the fixed point geometrically, ``w_n = w* + (w - w*) (1 + slope)^n``; both signs of one batch are
  integrated as the linear ODE ``dw/dt = n_up (slope_up w + dw_up) - n_down (...)`` with per-pulse
  rates ``log(1 + slope) / slope`` (exact for one sign). ``mult_noise``: the noise scales with the
  actual step (at the middle of the move) or with ``dw_min`` only. ``lifetime`` (the capacitor's
  leakage): ``w <- (w - reset_bias) (1 - 1/lifetime) + reset_bias`` once per batch.
* ``ExpStepDevice``: the step ``s (1 - A exp(+-gamma z))``, ``z = 2 a w / (b_max - b_min) + b``, makes
  ``E = A exp(gamma z)`` a logistic function of the pulse number: ``w_n = w + s n - log1p(E
  expm1(kappa n)) / (gamma c)``. Up and down runs follow each other (alternating order between
  batches). Where one pulse changes the step by more than ~10 % (PCM at low conductance) the first
  two pulses are applied one by one with their own noise and clipping, then the closed form.
  ``dw_min_std_add`` / ``dw_min_std_slope`` (PCM's noise model) are included.
* ``OneSidedUnitCell`` (PCMPreset): two devices per weight, ``w = w_1 - w_0`` (aihwkit's
  ``g_plus = 1``); raising ``w`` pulses device 1 up, lowering it pulses device 0 up. Every
  ``refresh_every`` samples (times the batch size with ``units_in_mbatch``), both arrays are read
  through the refresh forward's output noise and ADC, and where both are large
  (``refresh_upper/lower_thres``) both devices are reset (``reset_bias + reset_std xi``) and the
  difference is rewritten with the refresh pulse trains, column by column, as
  ``OneSidedRPUDevice::refreshWeights`` does (resets count as pulses).
* ``MixedPrecisionCompound``: ``chi += lr d^T x`` in digital; every ``transfer_every`` batches
  (after the first sample of the next batch, as aihwkit) ``n = trunc(chi / granularity)`` is
  written row by row with pulse trains of ``x = n``, ``d = e_j``, ``lr = granularity *
  transfer_lr`` (update and bit-line management on) and ``chi -= n * granularity``.

Approximations (measured against aihwkit in tests/test_pulsed.py): devices are independent
(aihwkit's compressed trains are shared by a row / a column, which correlates their devices); the
order of the pulses within each half batch is replaced by the closed forms (both signs
interleaved uniformly); the cycle-to-cycle noise of a run is added at its end (with a
first-order correction for the convexity of the ExpStep step); refresh and transfer happen at the
end of a batch, where aihwkit does them after the sample that completes the period.

Everything else (transfer compounds: Tiki-Taka, TTv2, AGAD; vector / reference unit cells;
PowStep, PiecewiseStep, ideal / floating-point devices; device drift, corrupt devices, other
pulse types) is refused with a ``ValueError`` naming the preset and the device class and pointing
to ``engine="aihwkit"``.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

# -- pulse trains: aihwkit's constants ----------------------------------------------------------


def weight_granularity(device_config: Any) -> float:
    """aihwkit's ``getWeightGranularity()``: the ``dw_min`` its update management divides by.

    It is ``dw_min`` for most devices, but the C++ ``calcWeightGranularity`` of some models differs:
    ExpStep takes the down step at ``w = 0`` (``dw_min (1 - up_down) (1 - A_down exp(-gamma_down b))``),
    PowStep ``dw_min 0.5^gamma``, PiecewiseStep ``dw_min`` times the middle up factor; a vector or
    one-sided unit cell averages its devices (one-sided: its first device, twice), a transfer
    compound takes its first (fast) device and a mixed-precision cell its ``granularity`` if set.
    """
    cfg = device_config
    name = type(cfg).__name__
    if hasattr(cfg, "unit_cell_devices"):
        devs = list(cfg.unit_cell_devices)
        if not devs:
            raise ValueError(f"{name} has no unit_cell_devices; cannot derive pulse trains")
        if hasattr(cfg, "transfer_every") or "OneSided" in [c.__name__ for c in type(cfg).__mro__]:
            return weight_granularity(devs[0])
        return sum(weight_granularity(d) for d in devs) / len(devs)
    inner = getattr(cfg, "device", None)
    if inner is not None and inner is not cfg and not hasattr(cfg, "dw_min"):
        gran = float(getattr(cfg, "granularity", 0.0) or 0.0)
        return gran if gran > 0 else weight_granularity(inner)
    if not hasattr(cfg, "dw_min"):
        raise ValueError(f"{name} has no dw_min; cannot derive pulse trains")
    dw_min = float(cfg.dw_min)
    mro = [c.__name__ for c in type(cfg).__mro__]
    if "ExpStepDevice" in mro:
        up_down = float(cfg.up_down)
        down_bias = -up_down if up_down > 0 else 0.0
        scale_down = (down_bias + 1.0) * dw_min
        z = float(cfg.b)  # "just take at zero": 2 * 0 / (w_max - w_min) * a + b
        dw_down = scale_down * max(1.0 - float(cfg.A_down) * math.exp(float(cfg.gamma_down) * (-z)), 0.0)
        return dw_down if dw_down > 0 else dw_min  # C++ averages (dw_down + dw_down) / 2
    if "PowStepDevice" in mro or "PowStepReferenceDevice" in mro:
        return dw_min * 0.5 ** float(cfg.pow_gamma)
    if "PiecewiseStepDevice" in mro:
        up = list(getattr(cfg, "piecewise_up", []) or [])
        down = list(getattr(cfg, "piecewise_down", []) or [])
        return dw_min * float(up[len(up) // 2]) if up and down else dw_min
    return dw_min


@dataclass
class PulseTrains:
    """Per-sample pulse-train constants (each a (B,) tensor) and pulse probabilities."""

    bl: Tensor  #: pulses per train, (B,)
    p_x: Tensor  #: row pulse probabilities, (B, in), in [0, 1]
    p_d: Tensor  #: column pulse probabilities, (B, out), in [0, 1]


def _train_constants(x_max: Tensor, d_max: Tensor, lr: float, up: Any, gran: float) -> tuple[Tensor, Tensor, Tensor]:
    """(BL, A, B) per sample from the abs-max of x and d (C++ calculateBlAB + performUpdateManagement).

    ``A`` scales the column (d) probabilities and ``B`` the row (x) probabilities. Inactive samples
    (``max|x| = 0`` or ``max|d| = 0``) get ``BL = 0``.
    """
    desired = int(up.desired_bl)
    ublm = bool(up.update_bl_management)
    um = bool(up.update_management) or ublm  # C++ initialize(): UBLM always turns UM on
    fixed = bool(getattr(up, "fixed_bl", True))
    ones = torch.ones_like(x_max)
    if lr <= 0:
        return torch.zeros_like(x_max), torch.zeros_like(x_max), torch.zeros_like(x_max)
    if fixed or ublm:
        bl0, a0 = desired, math.sqrt(lr / (gran * desired))
    elif gran * desired < lr:
        bl0, a0 = max(int(math.ceil(lr / gran)), 1), 1.0
    else:
        bl0, a0 = desired, math.sqrt(lr / (gran * desired))
    bl = ones * bl0
    a = ones * a0
    b = ones * a0
    active = (x_max > 0) & (d_max > 0)
    if um:
        x_val = x_max.clamp(min=1e-30)
        d_val = (float(getattr(up, "um_grad_scale", 1.0)) * d_max).clamp(min=1e-30)
        k = lr * x_val * d_val / gran
        if ublm:
            bl = torch.ceil(k).clamp(min=1, max=desired)
            a = torch.sqrt(lr / (gran * bl))
            b = a
        d_val = torch.where(k > desired, d_val * desired / k, d_val)
        a = a * torch.sqrt(x_val / d_val)
        b = b * torch.sqrt(d_val / x_val)
    bl = torch.where(active, bl, torch.zeros_like(bl))
    return bl, a, b


def _check_pulse_type(up: Any, where: str) -> None:
    name = str(getattr(up.pulse_type, "name", up.pulse_type)).upper()
    if name not in ("STOCHASTIC_COMPRESSED", "STOCHASTIC"):
        raise _refuse(where, f"update.pulse_type {name} (only stochastic pulse trains are implemented)")


def _probability_step(up: Any) -> float:
    """The step pulse probabilities are rounded to (C++ getDiscretizedValue), or 0 for none:
    ``res`` given as a step or as a number of steps; stochastic rounding keeps the mean."""
    res = float(getattr(up, "res", 0) or 0)
    if res <= 0 or bool(getattr(up, "sto_round", False)):
        return 0.0
    return 1.0 / res if res > 1.0 else res


def _probabilities(v: Tensor, scale: Tensor, up: Any) -> Tensor:
    """|v| * scale per sample, discretised like C++ getDiscretizedValue, clipped to 1."""
    p = v.abs() * scale[:, None]
    res = _probability_step(up)
    if res > 0:
        p = torch.round(p / res) * res
    return p.clamp(max=1.0)


def pulse_trains(x: Tensor, d: Tensor, lr: float, rpu_config: Any) -> PulseTrains:
    """aihwkit's stochastic pulse trains for a batch, sample by sample (see the module docstring)."""
    up = rpu_config.update
    gran = weight_granularity(rpu_config.device)
    x = x.detach().to(torch.float64)
    d = d.detach().to(torch.float64)
    bl, a, b = _train_constants(x.abs().amax(dim=1), d.abs().amax(dim=1), float(lr), up, gran)
    return PulseTrains(bl=bl, p_x=_probabilities(x, b, up), p_d=_probabilities(d, a, up))


def expected_pulses(x: Tensor, d: Tensor, lr: float, rpu_config: Any) -> Tensor:
    """Expected programming pulses (row/column coincidences) per sample, (B,)."""
    t = pulse_trains(x, d, lr, rpu_config)
    return t.bl * t.p_x.sum(1) * t.p_d.sum(1)


# -- random numbers ------------------------------------------------------------------------------


class _Rng:
    """All randomness of one engine: a generator on the engine's device, one on the CPU for seeds.

    Bulk randomness comes as raw 63-bit integers (``bits``): one ``int64`` per device gives a
    24-bit uniform and two standard normals (Box-Muller, 24-bit radius, 15-bit angle) inside the
    fused kernels, a third of the cost of drawing them one by one.
    """

    def __init__(self, seed: int, device: torch.device):
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        self.cpu = torch.Generator()
        self.cpu.manual_seed(int(seed) * 2654435761 % (2**63) + 1)

    def bits(self, shape: tuple[int, ...]) -> Tensor:
        return torch.empty(shape, dtype=torch.int64, device=self.device).random_(generator=self.gen)

    def randn(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device)

    def rand(self, shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=self.gen, device=self.device)

    def seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.cpu))

    def to(self, device: torch.device) -> "_Rng":
        return _Rng(self.seed(), device)

    def get_state(self) -> dict[str, Any]:
        return {"device": str(self.device), "gen": self.gen.get_state(), "cpu": self.cpu.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.cpu.set_state(state["cpu"])
        if torch.device(state["device"]) == self.device:
            self.gen.set_state(state["gen"])
        else:  # a state saved on another device: continue deterministically from the CPU stream
            self.gen.manual_seed(self.seed())


_TWO_PI = 2 * math.pi
_BGK = 0.5826  # Broadie-Glasserman-Kou continuity correction, -zeta(1/2) / sqrt(2 pi)


def _unpack(bits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """63 random bits -> a uniform in (0, 1) and two independent standard normals."""
    u = ((bits & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)
    u_r = (((bits >> 24) & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)
    ang = (((bits >> 48) & 0x7FFF).to(torch.float32) + 0.5) * (_TWO_PI * 2.0**-15)
    rad = torch.sqrt(-2.0 * torch.log(u_r))
    return u, rad * torch.cos(ang), rad * torch.sin(ang)


# -- fused device kernels (pure functions; compiled with torch.compile on large tiles) -----------


def _pulse_draw(mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float, u: Tensor):
    """Which devices are pulsed this batch, and how many pulses of each sign (one uniform).

    ``m2 * m2_scale`` is ``sum_b BL_b p^2`` (the count variance is ``mu - m2``). A device is pulsed
    with probability ``q = min(mu_up + mu_down, 1)``; then it gets
    ``mu / q`` pulses of each sign (exact means; integers below one pulse per batch, the mean count
    above). The count variance this does not carry, ``var - mu^2 (1 - q) / q``, is returned per
    pulsed device (``r``) and added as Gaussian weight noise of ``r`` steps squared. ``u / q`` is
    again uniform on a pulsed device and is handed on.
    """
    var_u = (mu_u - m2_u * m2_scale).clamp(min=0.0)  # binomial: sum_b BL p (1 - p)
    var_d = (mu_d - m2_d * m2_scale).clamp(min=0.0)
    q = (mu_u + mu_d).clamp(max=1.0)
    pulsed = u < q
    inv = torch.where(pulsed, 1.0 / q.clamp(min=1e-30), 0.0)
    nu = mu_u * inv
    nd = mu_d * inv
    keep = (1.0 - q) * inv
    r_u = (var_u - mu_u * mu_u * keep).clamp(min=0.0) * inv
    r_d = (var_d - mu_d * mu_d * keep).clamp(min=0.0) * inv
    ub = torch.where(pulsed, (u * inv).clamp(max=1.0), 1.0)
    # the two signs come together on a pulsed device; their covariance mu_u mu_d (1 - q) / q is
    # given back as noise (``r_ud``, in units of step_up * step_down) so that n_up - n_down keeps
    # the variance of independent counts
    r_ud = 2.0 * mu_u * mu_d * keep * inv
    return pulsed, nu, nd, r_u, r_d, ub, r_ud


def _bridge(w0: Tensor, w1: Tensor, var: Tensor, n: Tensor, lo: Tensor, hi: Tensor, z: Tensor, ub: Tensor) -> Tensor:
    """End point of ``n`` noisy pulses that aihwkit clips at the bounds after *every* pulse.

    The free (unclipped) path goes from ``w0`` to ``w1 + sqrt(var) z`` (``w1`` the deterministic end
    point). Clipping after every pulse is a reflection (Skorokhod): the end point is the free end
    point minus how far the path's maximum went past the upper bound, plus how far its minimum went
    below the lower one. Given its end points a Brownian bridge of variance v reaches
    ``(a + b + sqrt((b - a)^2 - 2 v log U)) / 2`` (U uniform, ``ub``); a walk of n discrete steps of
    std s overshoots like the continuous path with the bound moved out by ``0.5826 s`` (Broadie,
    Glasserman & Kou 1997). Without noise this is plain clipping.
    """
    free = w1 + var.sqrt() * z
    half = 0.5 * ((free - w0).square() - 2.0 * var * torch.log(ub)).sqrt()
    mid = 0.5 * (w0 + free)
    shift = _BGK * (var / n.clamp(min=1.0)).sqrt()
    out = free - (mid + half - hi - shift).clamp(min=0.0) + (lo - shift - mid + half).clamp(min=0.0)
    return torch.minimum(torch.maximum(out, lo), hi)


def _k_affine(hidden: Tensor, app: Tensor, ref: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor,
              m2_scale: float, bits: Tensor, cu: Tensor, cd: Tensor, lu: Tensor, ld: Tensor, au: Tensor, ad: Tensor, bu: Tensor,
              bd: Tensor, lo: Tensor, hi: Tensor, decay: Tensor, reset_bias: Tensor, sigma: float, wn: float,
              constant: bool, mult: bool, persistent: bool, has_decay: bool):
    """ConstantStep / LinearStep / SoftBounds(Reference): a batch of pulses in closed form.

    Up: ``v += au v + bu``, down: ``v -= ad v + bd`` (``v = w + reference``). n pulses of one sign
    are a geometric approach to the fixed point; both signs together integrate
    ``dv/dt = nu (au v + bu) - nd (ad v + bd)`` with per-pulse rates ``log(1 + a) / a`` (``lu``,
    ``ld``, ``cu = bu log(1 + au) / au``, ...), exact for one sign.
    """
    u, z1, z2 = _unpack(bits)
    pulsed, nu, nd, r_u, r_d, ub, r_ud = _pulse_draw(mu_u, mu_d, m2_u, m2_d, m2_scale, u)
    v = hidden + ref
    b = nu * cu - nd * cd
    if constant:
        v1 = v + b
        su2, sd2 = bu * bu, bd * bd
        var = (nu * su2 + nd * sd2) * (sigma * sigma) + r_u * su2 + r_d * sd2 + r_ud * bu * bd
    else:
        a = nu * lu + nd * ld
        small = a.abs() < 1e-4
        a_safe = torch.where(small, 1.0, a)
        phi = torch.where(small, 1.0 + 0.5 * a, torch.expm1(a) / a_safe)
        v1 = v * torch.exp(a) + b * phi
        vm = 0.5 * (v + v1)
        su = au * vm + bu
        sd = ad * vm + bd
        su2, sd2 = su * su, sd * sd
        c2c = (nu * su2 + nd * sd2) if mult else (nu * bu * bu + nd * bd * bd)
        # noise of the early pulses contracts with the geometric approach: weight exp(2 a (1 - t))
        phi2 = torch.where(small, 1.0 + a, torch.expm1(2.0 * a) / (2.0 * a_safe))
        var = (c2c * (sigma * sigma) + r_u * su2 + r_d * sd2 + r_ud * su * sd) * phi2
    out = _bridge(v, v1, var, nu + nd, lo, hi, z1, ub)
    h = out - ref
    if has_decay:  # PulsedRPUDevice::decayWeights, once per mini-batch (aihwkit post_update_step)
        h = torch.minimum(torch.maximum((h - reset_bias) * decay + reset_bias, lo), hi)
    if persistent:  # write noise: redrawn where pulsed (everywhere after a decay)
        app = h + wn * z2 if has_decay else torch.where(pulsed, h + wn * z2, app)
    else:
        app = h
    return h, app, (nu + nd).sum()


def _exp_closed(w: Tensor, n: Tensor, r: Tensor, s: Tensor, zc: Tensor, lo: Tensor, hi: Tensor, var: Tensor,
                A: float | Tensor, gam: float | Tensor, es_b: float, up: bool | Tensor, sigma: float, add: float,
                slope: float, cplx: bool):
    """n ExpStep pulses of one sign from w in closed form; adds their noise variance to ``var``.
    (``up``, ``A``, ``gam`` may be per-device tensors: the sign of each device's run.)

    ``E = A exp(+-gamma z)``, ``z = zc w + b``, follows ``dE/dn = kappa E (1 - E)`` with
    ``kappa = gamma zc s`` (logistic): ``E_n = E g / (1 - E + E g)``, ``g = exp(kappa n)``, and
    ``|dw| = s n - log1p(E (g - 1)) / (gamma zc)``. The per-pulse noise is averaged over the steps
    at the start and the end of the run. Returns the end point, the variance and the end step.
    """
    sgn = torch.where(up, 1.0, -1.0) if isinstance(up, Tensor) else (1.0 if up else -1.0)
    e = A * torch.exp((sgn * gam) * (w * zc + es_b))
    gc = gam * zc
    # the cycle-to-cycle noise spreads w along the run, and E is convex in w: the mean step is
    # that of E exp((gamma zc)^2 V / 2), V the spread accumulated so far (var) plus half the run's
    st_start = s * (1.0 - e).clamp(min=0.0)
    # (first-order correction: the exponent is capped where the spread is too wide for it)
    e = e * torch.exp((0.5 * gc * gc * (var + 0.5 * n * (sigma * st_start).square())).clamp(max=0.5))
    small = gc.abs() < 1e-12
    gm1 = torch.expm1(gc * s * n)
    t = (e * gm1).clamp(min=-1.0 + 1e-7)
    dw = torch.where(small, s * n * (1.0 - e), s * n - torch.log1p(t) / torch.where(small, 1.0, gc))
    moving = e < 1.0
    dw = torch.where(moving, dw, 0.0)
    span = hi - lo
    w1 = torch.minimum(torch.maximum(w + sgn * dw, lo - span), hi + span)
    e1 = e * (1.0 + gm1) / (1.0 + t)
    st0 = s * (1.0 - e).clamp(min=0.0)
    st1 = torch.where(moving, s * (1.0 - e1).clamp(min=0.0), 0.0)
    if cplx:
        extra0 = add + slope * w.abs()
        extra1 = add + slope * w1.abs()
        per2 = 0.5 * ((st0 + extra0).square() + (st1 + extra1).square())
    else:
        per2 = 0.5 * (st0 * st0 + st1 * st1)
    # noise injected early in the run is contracted (or stretched) like the run's end point:
    # dw_n / dw_0 = 1 / (1 + t); averaged over the run (linear interpolation of the factor)
    c = torch.where(moving, 1.0 / (1.0 + t), 1.0)
    shrink = (1.0 + c + c * c) / 3.0
    return w1, var + (n * (sigma * sigma) * per2 + r * 0.5 * (st0 * st0 + st1 * st1)) * shrink, st1


def _k_exp(hidden: Tensor, app: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float,
           bits: Tensor,
           su: Tensor, sd: Tensor, zc: Tensor, lo: Tensor, hi: Tensor, active: Tensor, decay: Tensor,
           reset_bias: Tensor, A_up: float, A_down: float, g_up: float, g_down: float, es_b: float, sigma: float,
           add: float, slope: float, cplx: bool, wn: float, persistent: bool, has_decay: bool, up_first: bool,
           one_sign: bool = False):
    """ExpStep (small steps): up and down runs in closed form, one after the other.

    ``one_sign``: no device gets pulses of both signs (a row-by-row or mixed-precision transfer: one
    sample per device), so one run per device, of its own sign, does it; the other run would leave
    the device exactly as it is. Half the work, the same result.
    """
    u, z1, z2 = _unpack(bits)
    pulsed, nu, nd, r_u, r_d, ub, r_ud = _pulse_draw(mu_u, mu_d, m2_u, m2_d, m2_scale, u)
    w = hidden
    var = torch.zeros_like(hidden)
    step_u = step_d = var
    if one_sign:  # r_ud = 0: mu_u mu_d = 0 on every device
        up = nu > 0
        w, var, _ = _exp_closed(w, torch.where(up, nu, nd), torch.where(up, r_u, r_d), torch.where(up, su, sd), zc,
                                lo, hi, var, torch.where(up, A_up, A_down), torch.where(up, g_up, g_down), es_b, up,
                                sigma, add, slope, cplx)
    else:
        for up in ((True, False) if up_first else (False, True)):
            if up:
                w, var, step_u = _exp_closed(w, nu, r_u, su, zc, lo, hi, var, A_up, g_up, es_b, True, sigma, add,
                                             slope, cplx)
            else:
                w, var, step_d = _exp_closed(w, nd, r_d, sd, zc, lo, hi, var, A_down, g_down, es_b, False, sigma, add,
                                             slope, cplx)
        var = var + r_ud * step_u * step_d
    out = _bridge(hidden, w, var, nu + nd, lo, hi, z1, ub)
    h = torch.where(active > 0, out, hidden)
    if has_decay:
        h = torch.minimum(torch.maximum((h - reset_bias) * decay + reset_bias, lo), hi)
    if persistent:
        app = h + wn * z2 if has_decay else torch.where(pulsed & (active > 0), h + wn * z2, app)
    else:
        app = h
    return h, app, (nu + nd).sum()


_POISSON_TERMS = 8
_POISSON_MAX = 2.0


def _poisson_small(lam: Tensor, u: Tensor) -> Tensor:
    """Poisson(lam) by inverse CDF at the uniform ``u``, for ``lam <= 2`` (up to 7)."""
    pk = torch.exp(-lam)
    cdf = pk
    n = (u > cdf).to(torch.float32)
    # terms below 1e-20 are dropped (and lam below 1e-10 gives none): cdf >= exp(-2) takes no term
    # under half its float32 ulp (7.5e-9), so the counts are those of the full recursion, whose
    # products would otherwise fall into subnormal floats, which x86 CPUs compute ~100x slower
    lam_t = torch.where(lam > 1e-10, lam, 0.0)
    for k in range(1, _POISSON_TERMS):
        pk = pk * lam_t / k
        pk = torch.where(pk > 1e-20, pk, 0.0)
        cdf = cdf + pk
        n = n + (u > cdf).to(torch.float32)
    return n


def _k_exp_exact(hidden: Tensor, app: Tensor, mu: Tensor, m2: Tensor, m2_scale: float, bits: Tensor, s: Tensor, zc: Tensor,
                 lo: Tensor, hi: Tensor, active: Tensor, A: float, gam: float, es_b: float, up: bool, sigma: float,
                 add: float, slope: float, cplx: bool, n_exact: int, wn: float, persistent: bool):
    """ExpStep with big, strongly nonlinear steps (PCM): pulses of one sign, integer counts.

    Counts: ``floor(mu - lam + u) + Poisson(lam)`` with ``lam`` the binomial variance less the
    ``f (1 - f)`` that the rounding carries (``f`` the fraction of ``mu``): Bernoulli where one train of
    one pulse is all there is, Poisson-like where all p are small; inverse CDF up to ``lam = 2``,
    rounding plus Gaussian above. The first ``n_exact`` pulses are applied one by one, each with
    its own cycle-to-cycle noise and clipping; the rest in closed form. ``bits``: 2 draws (3 with
    write noise or more than 2 exact pulses).
    """
    u0, za, zb = _unpack(bits[0])
    u1, zc1, zd = _unpack(bits[1])
    if persistent or n_exact > 2:  # a third draw: bridge uniform, write noise, third exact pulse
        u2, ze, _ = _unpack(bits[2])
        exact_z, z_end = (za, zb, zc1), zd
    else:  # two draws suffice: the last normal gives the bridge uniform
        exact_z, z_end, ze = (za, zb), zc1, zd
        u2 = torch.special.ndtr(zd).clamp(min=1e-12, max=1.0)
    # the count variance beyond what rounding mu up or down already gives, f (1 - f): a single
    # train of BL pulses (the row-by-row transfer, BL = 1 at low density) is then exactly binomial
    f = mu - torch.floor(mu)
    lam = (mu - m2 * m2_scale - f * (1.0 - f)).clamp(min=0.0)
    big = lam > _POISSON_MAX
    n_p = _poisson_small(torch.where(big, 0.0, lam), u1)
    n = torch.floor(mu - lam + u0) + torch.where(big, torch.floor(lam + u1), n_p)
    fl = lam - torch.floor(lam)
    r = torch.where(big, (lam - fl * (1.0 - fl)).clamp(min=0.0), 0.0)
    sgn = 1.0 if up else -1.0
    w = hidden
    left = n
    for z in exact_z[:n_exact]:
        step = s * (1.0 - A * torch.exp((sgn * gam) * (w * zc + es_b))).clamp(min=0.0)
        per = step + add + slope * w.abs() if cplx else step
        w_new = w + sgn * (step + sigma * per * z)
        w = torch.where(left > 0, torch.minimum(torch.maximum(w_new, lo), hi), w)
        left = (left - 1.0).clamp(min=0.0)
    w1, v, _ = _exp_closed(w, left, r, s, zc, lo, hi, torch.zeros_like(w), A, gam, es_b, up, sigma, add, slope, cplx)
    out = _bridge(w, w1, v, left, lo, hi, z_end, u2)
    h = torch.where(active > 0, out, hidden)
    if persistent:
        app = torch.where((n > 0) & (active > 0), h + wn * ze, app)
    else:
        app = h
    return h, app, n.sum()


def _k_exp_exact_pair(hp: Tensor, hm: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float,
                      bp: Tensor, bm: Tensor, sp: Tensor, sm: Tensor, zcp: Tensor, zcm: Tensor, lop: Tensor, lom: Tensor,
                      hip: Tensor, him: Tensor, actp: Tensor, actm: Tensor, **kw: Any):
    """:func:`_k_exp_exact` on a one-sided pair that a transfer pulses on one device only (``mu_u``
    raises the plus device, ``mu_d`` the minus one, never both): one kernel on the pulsed device of
    each pair, with the random bits it would have drawn alone (``bp``, ``bm``). The other device is
    left as it is, which is what the kernel does to a device with no pulses (devices stay within their
    bounds), so the result is that of two kernels at half the work. Returns (plus, minus, pulses)."""
    sel = mu_u > 0

    def w(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(sel, a, b)

    h, _, n = _k_exp_exact(w(hp, hm), w(hp, hm), w(mu_u, mu_d), w(m2_u, m2_d), m2_scale, torch.where(sel, bp, bm),
                           w(sp, sm), w(zcp, zcm), w(lop, lom), w(hip, him), w(actp, actm), persistent=False, **kw)
    return torch.where(sel, h, hp), torch.where(sel, hm, h), n


def _k_mp_prepare(chi: Tensor, gran: float, bl: Tensor, b: Tensor, pd: Tensor, res: float):
    """Mixed-precision transfer: ``n = trunc(chi / granularity)`` leaves chi, and the coincidence
    moments of the row-wise pulse trains (x = n[j], d = e_j; per-row ``BL``, ``B``, ``p_d``)."""
    n = torch.trunc(chi / gran)
    chi = chi - n * gran
    px = n.abs() * b
    if res > 0:
        px = torch.round(px / res) * res
    p = px.clamp(max=1.0) * pd
    mu = bl * p
    m2 = mu * p
    zero = torch.zeros_like(mu)
    down = n > 0  # positive chi lowers the weight
    return (chi, torch.where(down, zero, mu), torch.where(down, mu, zero), torch.where(down, zero, m2),
            torch.where(down, m2, zero))


def _k_refresh_read(wp: Tensor, wm: Tensor, bits: Tensor, out_noise: float, res: float, bound: float,
                    w_max: float, w_min: float, hi: float, lo: float):
    """OneSided refresh: read both arrays through the refresh forward with unit inputs (each output
    is ``w + out_noise xi``, ADC-quantised and clipped, as aihwkit's output stage), and decide which
    pairs to refresh (both devices large): ``(refresh, diff_plus, diff_minus)``, ``refresh`` a 0 / 1
    float mask (compiled CPU kernels store bool tensors several times slower)."""
    _, za, zb = _unpack(bits)
    rp = wp + out_noise * za
    rm = wm + out_noise * zb
    if res > 0:
        rp = torch.round(rp / res) * res
        rm = torch.round(rm / res) * res
    rp = rp.clamp(min=-bound, max=bound)
    rm = rm.clamp(min=-bound, max=bound)
    bigger = rp > rm
    crit = torch.where(bigger, (rp / w_max > hi) & (rm / w_min > lo), (rp / w_max > lo) & (rm / w_min > hi))
    return crit.to(wp.dtype), torch.where(crit & bigger, rp - rm, 0.0), torch.where(crit & ~bigger, rm - rp, 0.0)


class _Kernels:
    """The fused kernels, eager or compiled (``torch.compile``, dynamic shapes, made once per process).

    Compilation is tried on first use; if it fails (no C++ compiler, no triton), the engine warns
    once and stays eager: same results up to float rounding, a few times slower.
    """

    _compiled: dict[str, Callable] = {}
    _broken = False

    def __init__(self, compile: bool):
        self.compile = compile

    def __call__(self, name: str | Callable, *args: Any, **kwargs: Any):
        fn = name if callable(name) else globals()[name]
        name = name if isinstance(name, str) else f"{fn.__module__}.{fn.__qualname__}"
        if not self.compile or _Kernels._broken or _small_call(args):
            return fn(*args, **kwargs)
        if name not in _Kernels._compiled:
            _Kernels._compiled[name] = torch.compile(fn, dynamic=True)
        try:
            return _Kernels._compiled[name](*args, **kwargs)
        except Exception as exc:  # pragma: no cover - depends on the toolchain
            import warnings

            warnings.warn(f"analogff: torch.compile failed ({type(exc).__name__}: {exc}); the torch engine "
                          "runs its device kernels eagerly (slower)", RuntimeWarning, stacklevel=3)
            _Kernels._broken = True
            return fn(*args, **kwargs)


_COMPILE_MIN_DEVICES = 65536


def _small_call(args: tuple) -> bool:
    """A call on a small subset of devices (the sparse refresh and transfer paths pass flat 1-D
    subsets of varying, often tiny size) runs eagerly: compiling gains little there, and sizes 0
    and 1 would each recompile the kernel (seconds per recompile on CUDA, on random steps)."""
    for a in args:
        if isinstance(a, Tensor) and a.dim() > 0:
            return a.dim() == 1 and a.numel() < _COMPILE_MIN_DEVICES // 4
    return False


def _compile_default(n_devices: int, device: torch.device) -> bool:
    """Compile the kernels for big tiles (>= 65536 devices) unless ANALOGFF_COMPILE says otherwise."""
    import os

    env = os.environ.get("ANALOGFF_COMPILE", "auto").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return n_devices >= _COMPILE_MIN_DEVICES


# -- device models -------------------------------------------------------------------------------

_SUPPORTED = ("ConstantStepDevice", "LinearStepDevice", "SoftBoundsDevice", "SoftBoundsReferenceDevice",
              "ExpStepDevice")


def _refuse(where: str, problem: str) -> ValueError:
    return ValueError(f"engine='torch' cannot simulate {where}: {problem}; use engine='aihwkit' for it")


def _device_kind(cfg: Any, where: str) -> str:
    mro = [c.__name__ for c in type(cfg).__mro__]
    if "SoftBoundsPmaxDevice" in mro:
        raise _refuse(where, "SoftBoundsPmaxDevice is not implemented")
    for name in _SUPPORTED:
        if name in mro:
            return name
    raise _refuse(where, f"device model {type(cfg).__name__} is not implemented "
                         f"(supported: {', '.join(_SUPPORTED)}, OneSidedUnitCell, MixedPrecisionCompound)")


class _DeviceArray:
    """One aihwkit pulsed device per cross-point: its hidden parameters and its pulse response.

    ``p`` holds the per-device parameters under aihwkit's ``get_hidden_parameters()`` names
    (``max_bound``, ``min_bound``, ``dwmin_up``, ``dwmin_down``, ``decay_scales``,
    ``diffusion_rates``, ``reset_bias``, ``drift_nu`` and ``slope_up``/``slope_down`` or
    ``reference``); ``hidden`` is the weight the pulses act on (aihwkit's persistent weight when
    ``write_noise_std > 0``) and ``w`` the apparent weight the MVM reads.
    """

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, kernels: _Kernels,
                 exact_pulses: int | None = None):
        self.kind = _device_kind(cfg, where)
        self.cfg = cfg
        self.where = where
        self.shape = shape
        self.device = rng.device
        self.k = kernels
        c = cfg
        if float(c.corrupt_devices_prob) > 0:
            raise _refuse(where, "corrupt_devices_prob > 0 is not implemented")
        if bool(getattr(c, "adjust_bounds_with_up_down", False)):
            raise _refuse(where, "adjust_bounds_with_up_down is not implemented")
        drift = getattr(c, "drift", None)
        if drift is not None and float(getattr(drift, "nu", 0.0)) > 0:
            raise _refuse(where, "device drift (drift.nu > 0) during training is not implemented")
        self.sigma = float(c.dw_min_std)
        wn = float(getattr(c, "write_noise_std", 0.0) or 0.0)
        if wn > 0 and self.kind == "ConstantStepDevice":
            raise _refuse(where, "ConstantStepDevice has no write noise in aihwkit")
        self.persistent = wn > 0
        self.write_noise = wn * float(c.dw_min)  # getScaledWriteNoise()
        self.noise_on_set = bool(getattr(c, "apply_write_noise_on_set", True))
        if self.kind in ("LinearStepDevice", "SoftBoundsReferenceDevice"):
            self.mult = bool(c.mult_noise)
        elif self.kind == "SoftBoundsDevice":
            self.mult = bool(getattr(c, "mult_noise", True))
        else:
            self.mult = True
        if self.kind in ("LinearStepDevice", "SoftBoundsDevice") and \
                (getattr(c, "reverse_up", False) or getattr(c, "reverse_down", False)) and not self.mult:
            raise _refuse(where, "reverse_up/down needs mult_noise (aihwkit refuses it too)")
        self.complex_noise = self.kind == "ExpStepDevice" and self.sigma > 0 and (
            float(c.dw_min_std_add) != 0 or float(c.dw_min_std_slope) != 0)
        # ExpStep's complex noise: per-pulse std dw_min_std (|dw| + add + slope |w|); zeros without it
        self.noise_add_slope = (float(c.dw_min_std_add), float(c.dw_min_std_slope)) if self.complex_noise else (0.0, 0.0)
        self.has_decay = float(c.lifetime) > 0
        self.has_diffusion = float(c.diffusion) > 0
        self.exact_pulses = exact_pulses
        self.calls = 0
        self.p = self._populate(rng)
        self.hidden = torch.zeros(shape, device=self.device)
        self.w = self.hidden
        self._derive()

    # -- construction --------------------------------------------------------------------------
    def _populate(self, rng: _Rng) -> dict[str, Tensor]:
        """PulsedRPUDevice::populate and the model's own populate, drawn from ``rng``."""
        c, shape = self.cfg, self.shape

        def g() -> Tensor:
            return rng.randn(shape)

        w_max, w_min = float(c.w_max), float(c.w_min)
        if w_min > 0 or w_max < 0:
            raise _refuse(self.where, "[w_min, w_max] must contain 0 (aihwkit refuses it too)")
        max_bound = w_max * (1 + float(c.w_max_dtod) * g())
        min_bound = w_min * (1 + float(c.w_min_dtod) * g())
        dtod = float(c.dw_min_dtod)
        gain = torch.exp(dtod * g()) if bool(c.dw_min_dtod_log_normal) else 1 + dtod * g()
        r = float(c.up_down_dtod) * g()
        up_down = float(c.up_down)
        up_bias = 0.0 if up_down > 0 else up_down
        down_bias = -up_down if up_down > 0 else 0.0
        dw_min = float(c.dw_min)
        scale_up = (up_bias + gain + r) * dw_min
        scale_down = (down_bias + gain - r) * dw_min
        if bool(c.enforce_consistency):
            scale_up, scale_down = scale_up.abs(), scale_down.abs()
            swap = min_bound > max_bound
            max_bound, min_bound = torch.where(swap, min_bound, max_bound), torch.where(swap, max_bound, min_bound)
            max_bound, min_bound = max_bound.abs(), -min_bound.abs()
        else:
            off = min_bound > max_bound
            mid = max_bound + (min_bound - max_bound) / 2
            max_bound, min_bound = torch.where(off, mid, max_bound), torch.where(off, mid, min_bound)
        if bool(c.perfect_bias):
            last = torch.zeros(shape, dtype=torch.bool, device=self.device)
            last[:, -1] = True
            scale_up = torch.where(last, dw_min, scale_up)
            scale_down = torch.where(last, dw_min, scale_down)
            min_bound = torch.where(last, 100 * w_min, min_bound)
            max_bound = torch.where(last, 100 * w_max, max_bound)
        diffusion = (float(c.diffusion) * (1 + float(c.diffusion_dtod) * g())).abs()
        reset_bias = float(c.reset) + float(c.reset_dtod) * g()
        if float(c.lifetime) > 0:
            t = float(c.lifetime) * (1 + float(c.lifetime_dtod) * g())
            decay = torch.where(t > 1, 1 - 1 / t, torch.zeros_like(t))
        else:
            decay = torch.ones(shape, device=self.device)
        p = {"max_bound": max_bound, "min_bound": min_bound, "dwmin_up": scale_up, "dwmin_down": scale_down,
             "decay_scales": decay, "diffusion_rates": diffusion, "reset_bias": reset_bias,
             "drift_nu": torch.zeros(shape, device=self.device)}
        if self.kind in ("LinearStepDevice", "SoftBoundsDevice"):
            if self.kind == "SoftBoundsDevice":  # C++ SoftBounds = LinearStep with these settings
                gu, gd, gu_dtod, gd_dtod, allow_inc, mean_ref = 1.0, 1.0, 0.0, 0.0, False, False
            else:
                gu, gd = float(c.gamma_up), float(c.gamma_down)
                gu_dtod, gd_dtod = float(c.gamma_up_dtod), float(c.gamma_down_dtod)
                allow_inc, mean_ref = bool(c.allow_increasing), bool(c.mean_bound_reference)
            diff_up = gu + gu_dtod * g()
            diff_down = gd + gd_dtod * g()
            if not allow_inc:
                diff_up, diff_down = diff_up.abs(), diff_down.abs()
            rev_up, rev_down = bool(getattr(c, "reverse_up", False)), bool(getattr(c, "reverse_down", False))
            off = float(getattr(c, "reverse_offset", 0.01))
            if mean_ref:
                ref_up = torch.full(shape, (w_min - off) if rev_up else w_max, device=self.device)
                ref_down = torch.full(shape, (w_max + off) if rev_down else w_min, device=self.device)
            else:
                ref_up = (min_bound - off) if rev_up else max_bound
                ref_down = (max_bound + off) if rev_down else min_bound
            p["slope_up"] = torch.where(ref_up != 0, -diff_up * scale_up / torch.where(ref_up != 0, ref_up, 1.0), 0.0)
            p["slope_down"] = torch.where(ref_down != 0,
                                          -diff_down * scale_down / torch.where(ref_down != 0, ref_down, 1.0), 0.0)
        if self.kind == "SoftBoundsReferenceDevice":
            ok = (max_bound > 0) & (min_bound < 0)
            slope_down = -scale_down / torch.where(ok, min_bound, -1.0) * (1 + float(c.slope_down_dtod) * g()).abs()
            slope_up = scale_up / torch.where(ok, max_bound, 1.0) * (1 + float(c.slope_up_dtod) * g()).abs()
            max_bound = torch.where(ok, scale_up / slope_up, max_bound)
            min_bound = torch.where(ok, -scale_down / slope_down, min_bound)
            p["max_bound"], p["min_bound"] = max_bound, min_bound
            ref = float(c.reference_mean) + float(c.reference_std) * g()
            if bool(c.subtract_symmetry_point):
                sp = (scale_up - scale_down) / (scale_up / torch.where(ok, max_bound, 1.0)
                                                - scale_down / torch.where(ok, min_bound, -1.0))
                sp = torch.where(ok, sp, 0.0)
                ref = ref + sp
                p["reset_bias"] = p["reset_bias"] + sp
            p["reference"] = ref
        return p

    def _derive(self) -> None:
        """Per-device constants of the closed forms, from ``p``."""
        p = self.p
        self.bmax, self.bmin = p["max_bound"], p["min_bound"]
        su, sd = p["dwmin_up"], p["dwmin_down"]
        self.ref = p.get("reference", torch.zeros(self.shape, device=self.device))
        if self.kind == "ExpStepDevice":
            c = self.cfg
            b_diff = self.bmax - self.bmin
            # a 0 / 1 mask in float: compiled CPU kernels load (and store) bool tensors several times
            # slower than float ones
            self.active = (b_diff > 0).to(b_diff.dtype)
            self.zc = torch.where(b_diff > 0, 2 * float(c.a) / torch.where(b_diff > 0, b_diff, 1.0), 0.0)
            self.es = (float(c.A_up), float(c.A_down), float(c.gamma_up), float(c.gamma_down), float(c.b))
            if self.exact_pulses is None:
                self.exact_pulses = 0 if self._exp_discreteness() < 0.1 else 2
            return
        if self.kind == "ConstantStepDevice":
            zero = torch.zeros(self.shape, device=self.device)
            self.au = self.ad = self.lu = self.ld = zero
            self.bu, self.bd = self.cu, self.cd = su, sd
            return
        if self.kind == "SoftBoundsReferenceDevice":
            au = torch.where(self.bmax > 0, -su / torch.where(self.bmax > 0, self.bmax, 1.0), 0.0)
            ad = torch.where(self.bmin < 0, -sd / torch.where(self.bmin < 0, self.bmin, -1.0), 0.0)
        else:
            au, ad = p["slope_up"], p["slope_down"]
        self.au, self.ad, self.bu, self.bd = au, ad, su, sd
        self.lu = torch.log1p(au.clamp(min=-0.999))
        self.ld = torch.log1p((-ad).clamp(min=-0.999))
        self.cu = su * _log1p_ratio(au)
        self.cd = sd * _log1p_ratio(-ad)

    def _exp_discreteness(self) -> float:
        """Largest relative change of the ExpStep step (or of E) caused by one pulse over the nominal
        weight range: above ~10 % the pulses are counted as integers and the first ones applied one
        by one (PCM), below it the closed form is accurate (ReRAM ES: ~5 % at the very bound)."""
        c = self.cfg
        A_up, A_down, g_up, g_down, es_b = self.es
        w_max, w_min = float(c.w_max), float(c.w_min)
        span = w_max - w_min
        if span <= 0:
            return 0.0
        zc = 2 * float(c.a) / span
        zs = (zc * w_min + es_b, zc * w_max + es_b)
        s = float(c.dw_min) * (1 + abs(float(c.up_down)))
        worst = 0.0
        for A, gam, sgn in ((A_up, g_up, 1.0), (A_down, g_down, -1.0)):
            e = max(abs(A) * math.exp(sgn * gam * z) for z in zs)
            kappa = abs(gam * zc) * s
            worst = max(worst, kappa * (1 + e))
        return worst

    # -- state ---------------------------------------------------------------------------------
    def hidden_parameters(self) -> dict[str, Tensor]:
        out = dict(self.p)
        if self.persistent:
            out["persistent_weights"] = self.hidden
        return out

    def load_hidden_parameters(self, state: dict[str, Tensor]) -> None:
        for k in self.p:
            if k in state:
                self.p[k] = state[k].detach().to(self.device, torch.float32).clone().reshape(self.shape)
        if self.persistent and "persistent_weights" in state:
            self.hidden = state["persistent_weights"].detach().to(self.device, torch.float32).clone().reshape(self.shape)
        self._derive()

    def to(self, device: torch.device) -> None:
        self.device = device
        self.p = {k: v.to(device) for k, v in self.p.items()}
        self.hidden = self.hidden.to(device)
        self.w = self.w.to(device) if self.persistent else self.hidden
        self._derive()

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        """onSetWeights: clip to the bounds; with write noise the apparent weight gets fresh noise."""
        w = torch.minimum(torch.maximum(w, self.bmin), self.bmax)
        self.hidden = w.clone()
        if self.persistent:
            self.w = self.hidden + self.write_noise * rng.randn(self.shape) if self.noise_on_set else self.hidden.clone()
        else:
            self.w = self.hidden

    def set_apparent(self, w: Tensor) -> None:
        w = w.detach().to(self.device, torch.float32).clone().reshape(self.shape)
        if self.persistent:
            self.w = w
        else:
            self.hidden = w
            self.w = self.hidden

    # -- pulses --------------------------------------------------------------------------------
    def pulse(self, mu_u: Tensor, mu_d: Tensor | None, m2_u: Tensor, m2_d: Tensor | None, rng: _Rng,
              m2_scale: float = 1.0, post: bool = False, index: Tensor | None = None, one_sign: bool = False) -> float:
        """Apply a batch's pulses from the moments of the up / down coincidence counts: mean ``mu``
        and ``m2 * m2_scale = sum_b BL_b p^2`` (variance ``mu - m2``); ``mu_d None``: up only.
        ``post`` also does the once-per-batch decay. ``index`` (flat indices): only those devices
        (the moments are then given for them only). ``one_sign``: no device has both up and down
        moments (a transfer; ``mu_d None`` implies it). Returns the number of pulses."""
        shape = self.shape if index is None else (int(index.numel()),)
        zero = torch.zeros((), device=self.device)
        if mu_d is None:
            mu_d = m2_d = zero.expand(shape)
            one_sign = True

        def at(t: Tensor) -> Tensor:
            return t if index is None else t.reshape(-1)[index]

        decay = post and self.has_decay and index is None
        self.calls += 1
        hidden, app = at(self.hidden), at(self.w)
        if self.kind == "ExpStepDevice":
            A_up, A_down, g_up, g_down, es_b = self.es
            cplx = self.complex_noise
            add, slope = self.noise_add_slope
            if self.exact_pulses:
                draws = 3 if (self.persistent or self.exact_pulses > 2) else 2
                h, w, n = self.k("_k_exp_exact", hidden, app, mu_u, m2_u, m2_scale, rng.bits((draws,) + shape),
                                 at(self.p["dwmin_up"]), at(self.zc), at(self.bmin), at(self.bmax), at(self.active),
                                 A=A_up, gam=g_up, es_b=es_b, up=True, sigma=self.sigma, add=add, slope=slope,
                                 cplx=cplx, n_exact=int(self.exact_pulses), wn=self.write_noise,
                                 persistent=self.persistent)
            else:
                h, w, n = self.k("_k_exp", hidden, app, mu_u, mu_d, m2_u, m2_d, m2_scale, rng.bits(shape),
                                 at(self.p["dwmin_up"]), at(self.p["dwmin_down"]), at(self.zc), at(self.bmin),
                                 at(self.bmax), at(self.active), at(self.p["decay_scales"]), at(self.p["reset_bias"]),
                                 A_up=A_up, A_down=A_down, g_up=g_up, g_down=g_down, es_b=es_b, sigma=self.sigma,
                                 add=add, slope=slope, cplx=cplx, wn=self.write_noise, persistent=self.persistent,
                                 has_decay=decay, up_first=self.calls % 2 == 1,
                                 one_sign=one_sign)
                decay = False
        else:
            h, w, n = self.k("_k_affine", hidden, app, at(self.ref), mu_u, mu_d, m2_u, m2_d, m2_scale, rng.bits(shape),
                             at(self.cu), at(self.cd), at(self.lu), at(self.ld), at(self.au), at(self.ad), at(self.bu),
                             at(self.bd), at(self.bmin), at(self.bmax), at(self.p["decay_scales"]),
                             at(self.p["reset_bias"]), sigma=self.sigma, wn=self.write_noise,
                             constant=self.kind == "ConstantStepDevice", mult=self.mult, persistent=self.persistent,
                             has_decay=decay)
            decay = False
        if index is None:
            self.hidden = h
            self.w = w if self.persistent else h
        else:
            self.hidden = self.hidden.reshape(-1).index_copy(0, index, h).reshape(self.shape)
            if self.persistent:
                self.w = self.w.reshape(-1).index_copy(0, index, w).reshape(self.shape)
            else:
                self.w = self.hidden
        if post:
            self.post_update(rng, decay=decay)
        return float(n)

    def pairs_with(self, other: "_DeviceArray") -> bool:
        """Whether a one-sided pair of self (plus) and other (minus) can take a transfer in one kernel
        (:meth:`pulse_pair`): exact-pulse ExpStep devices of one configuration, nothing random after
        the pulses (no write noise, diffusion or decay)."""
        return all(a.kind == "ExpStepDevice" and bool(a.exact_pulses) and not a.persistent and not a.has_diffusion
                   and not a.has_decay for a in (self, other)) and (self.es, self.sigma, self.exact_pulses,
                                                                      self.complex_noise) == \
            (other.es, other.sigma, other.exact_pulses, other.complex_noise)

    def pulse_pair(self, minus: "_DeviceArray", mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, rng: _Rng,
                   m2_scale: float = 1.0) -> float:
        """``self.pulse(mu_u, ..., post=True)`` then ``minus.pulse(mu_d, ..., post=True)`` for a transfer
        (no pair gets both), in one kernel (:func:`_k_exp_exact_pair`) with the same random draws:
        the same values at half the work. Needs :meth:`pairs_with`. Returns the number of pulses."""
        draws = 3 if self.exact_pulses > 2 else 2
        bp = rng.bits((draws,) + self.shape)  # drawn in the order of the two pulse() calls
        bm = rng.bits((draws,) + minus.shape)
        self.calls += 1
        minus.calls += 1
        A_up, _, g_up, _, es_b = self.es
        add, slope = self.noise_add_slope
        hp, hm, n = self.k("_k_exp_exact_pair", self.hidden, minus.hidden, mu_u, mu_d, m2_u, m2_d, m2_scale, bp, bm,
                           self.p["dwmin_up"], minus.p["dwmin_up"], self.zc, minus.zc, self.bmin, minus.bmin,
                           self.bmax, minus.bmax, self.active, minus.active, A=A_up, gam=g_up, es_b=es_b, up=True,
                           sigma=self.sigma, add=add, slope=slope, cplx=self.complex_noise,
                           n_exact=int(self.exact_pulses), wn=0.0)
        self.hidden = self.w = hp
        minus.hidden = minus.w = hm
        return float(n)

    def reset_at(self, index: Tensor, rng: _Rng) -> None:
        """resetAtIndices: w = reset_bias + reset_std * xi, clipped, at the flat ``index``."""
        if self.persistent:
            raise _refuse(self.where, "reset of a device with write noise (aihwkit refuses it too)")

        def at(t: Tensor) -> Tensor:
            return t.reshape(-1)[index]

        new = at(self.p["reset_bias"]) + float(self.cfg.reset_std) * rng.randn((int(index.numel()),))
        new = torch.minimum(torch.maximum(new, at(self.bmin)), at(self.bmax))
        self.hidden = self.hidden.reshape(-1).index_copy(0, index, new).reshape(self.shape)
        self.w = self.hidden

    def post_update(self, rng: _Rng, decay: bool | None = None) -> None:
        """Once per mini-batch (aihwkit's post_update_step): diffusion, then decay (lifetime)."""
        decay = self.has_decay if decay is None else decay
        if not (self.has_diffusion or decay):
            return
        if self.has_diffusion:
            self.hidden = self.hidden + self.p["diffusion_rates"] * rng.randn(self.shape)
            self.hidden = torch.minimum(torch.maximum(self.hidden, self.bmin), self.bmax)
        if decay:
            b = self.p["reset_bias"]
            self.hidden = torch.minimum(torch.maximum((self.hidden - b) * self.p["decay_scales"] + b, self.bmin),
                                        self.bmax)
        if self.persistent:  # applyUpdateWriteNoise: all apparent weights redrawn
            self.w = self.hidden + self.write_noise * rng.randn(self.shape)
        else:
            self.w = self.hidden


def _log1p_ratio(s: Tensor) -> Tensor:
    """log(1 + s) / s, 1 at s = 0 (the per-pulse rate of a geometric approach)."""
    small = s.abs() < 1e-3
    return torch.where(small, 1 - s / 2 + s * s / 3, torch.log1p(s.clamp(min=-0.999)) / torch.where(small, 1.0, s))


# -- cells: how the devices of a cross-point make one weight ------------------------------------

_SECOND_MOMENT_SAMPLES = 64


def _coincidence_moments(x: Tensor, d: Tensor, lr: float, up: Any, gran: float, rng: _Rng,
                         max_second: int = _SECOND_MOMENT_SAMPLES):
    """Moments of the up and down coincidence counts per device over the batch.

    Returns ``(mu_up, mu_down, m2_up, m2_down, m2_scale)``, each (out, in) (views): the means
    ``sum_b BL_b p_x p_d`` split by the sign of ``x d`` (positive lowers the weight), one GEMM (two
    when x has both signs), and ``m2 * m2_scale = sum_b BL_b p^2`` (the binomial variance is
    ``mu - m2``), estimated from at most ``max_second`` samples of the batch (unbiased; it only
    corrects a Poisson variance).
    """
    bl, a, b = _train_constants(x.abs().amax(dim=1), d.abs().amax(dim=1), lr, up, gran)
    px = _probabilities(x, b, up)  # (B, in)
    pd = _probabilities(d, a, up)  # (B, out)
    dd = pd * bl[:, None]
    zero = torch.zeros((), device=x.device)
    d_pos = torch.where(d > 0, dd, zero)
    d_neg = torch.where(d < 0, dd, zero)
    n_out = d.shape[1]
    bsz = x.shape[0]
    if max_second > 0 and bsz > max_second:
        idx = torch.randperm(bsz, generator=rng.cpu)[:max_second].to(x.device)
        scale2 = bsz / max_second
    else:
        idx, scale2 = None, 1.0
    pd_s = pd if idx is None else pd[idx]
    if bool((x >= 0).all()):  # FF activations: one sign of x, one GEMM for both signs of d
        left = torch.cat((d_pos, d_neg), 1)  # (B, 2 out)
        mu = left.T @ px  # (2 out, in): rows [down; up]
        ls = left if idx is None else left[idx]
        px_s = px if idx is None else px[idx]
        m2 = (ls * torch.cat((pd_s, pd_s), 1)).T @ (px_s * px_s)
    else:
        zx = torch.zeros((), device=x.device)
        x_pos = torch.where(x > 0, px, zx)
        x_neg = torch.where(x < 0, px, zx)
        left = torch.cat((torch.cat((d_pos, d_neg), 1), torch.cat((d_neg, d_pos), 1)), 0)  # (2B, 2 out)
        right = torch.cat((x_pos, x_neg), 0)  # (2B, in)
        mu = left.T @ right
        if idx is not None:
            idx2 = torch.cat((idx, idx + bsz))
            left, right, pd2 = left[idx2], right[idx2], torch.cat((pd_s, pd_s), 0)
        else:
            pd2 = torch.cat((pd, pd), 0)
        m2 = (left * torch.cat((pd2, pd2), 1)).T @ (right * right)
    return mu[n_out:], mu[:n_out], m2[n_out:], m2[:n_out], scale2


def _k_rowwise(u: Tensor, a: Tensor, px: Tensor, bl: Tensor, res: float):
    """Element-wise core of :func:`_rowwise_moments`: column probabilities |u| a (discretised to
    ``res`` when > 0, clipped to 1), coincidence mean BL p_x p_d and second moment, split by sign."""
    p = u.abs() * a
    if res > 0:
        p = torch.round(p / res) * res
    p = p.clamp(max=1.0)
    dd = p * (bl * px)
    m2 = dd * p * px
    zero = torch.zeros((), device=u.device)
    pos, neg = u > 0, u < 0  # positive errors lower the weight
    return torch.where(neg, dd, zero), torch.where(pos, dd, zero), torch.where(neg, m2, zero), torch.where(pos, m2, zero)


def _rowwise_moments(u: Tensor, lr: float, up: Any, gran: float, kernels: _Kernels | None = None):
    """:func:`_coincidence_moments` of ``x = I, d = u^T``: row i driven alone (value 1) with the
    column errors ``u[:, i]``, the row-by-row transfer of a digital update matrix u (out, in). Each
    device sees one sample, so the moments are element-wise and exact (no GEMM). Same return value."""
    n_in = u.shape[1]
    ones = torch.ones(n_in, device=u.device, dtype=u.dtype)
    bl, a, b = _train_constants(ones, u.abs().amax(dim=0), lr, up, gran)  # per row i (sample)
    px = _probabilities(ones[:, None], b, up)[:, 0]  # (in,): the driven row's pulse probability
    run = kernels if kernels is not None else (lambda name, *args: globals()[name](*args))
    return (*run("_k_rowwise", u, a, px, bl, _probability_step(up)), 1.0)


class _SingleCell:
    """One device per cross-point (ConstantStep, LinearStep, SoftBounds(Reference), ExpStep)."""

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, up: Any, kernels: _Kernels):
        self.arr = _DeviceArray(cfg, shape, rng, where, kernels)
        if self.arr.kind == "ExpStepDevice" and self.arr.exact_pulses:
            raise _refuse(where, "an ExpStep device with large nonlinear steps pulsed in both directions "
                                 "(only the one-sided PCM pair is implemented for it)")
        self.up = up
        self.gran = weight_granularity(cfg)
        # two parts in order: FF's [positive; negative] batch is exact (see update)
        self.chunks = 2

    def weights(self) -> Tensor:
        return self.arr.w

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        self.arr.set_weights(w, rng)

    def update_rows(self, u: Tensor, lr: float, rng: _Rng) -> float:
        """Row-by-row transfer of u (out, in); every device gets one sample's pulses."""
        mu_u, mu_d, m2_u, m2_d, sc = _rowwise_moments(u, lr, self.up, self.gran, self.arr.k)
        return self.arr.pulse(mu_u, mu_d, m2_u, m2_d, rng, m2_scale=sc, post=True, one_sign=True)

    def update(self, x: Tensor, d: Tensor, lr: float, rng: _Rng) -> float:
        # aihwkit pulses sample after sample: where the step depends on the weight or a bound is
        # reached, the order of the raising and lowering samples matters (FF's [positive; negative]
        # batch: hundreds of pulses up, then as many down). The batch is applied in order, in
        # ``chunks`` parts.
        b = x.shape[0]
        k = min(self.chunks, b)
        pulses = 0.0
        for i in range(k):
            lo, hi = i * b // k, (i + 1) * b // k
            mu_u, mu_d, m2_u, m2_d, sc = _coincidence_moments(x[lo:hi], d[lo:hi], lr, self.up, self.gran, rng,
                                                              max(_SECOND_MOMENT_SAMPLES // k, 16))
            pulses += self.arr.pulse(mu_u, mu_d, m2_u, m2_d, rng, m2_scale=sc, post=i == k - 1)
        return pulses

    def hidden_parameters(self) -> dict[str, Tensor]:
        return self.arr.hidden_parameters()

    def load_hidden_parameters(self, state: dict[str, Tensor], weights: Tensor | None) -> None:
        self.arr.load_hidden_parameters(state)
        if weights is not None:
            self.arr.set_apparent(weights)

    def to(self, device: torch.device) -> None:
        self.arr.to(device)

    def extra_state(self) -> dict[str, Any]:
        return {"calls": self.arr.calls}

    def load_extra_state(self, s: dict[str, Any]) -> None:
        self.arr.calls = int(s["calls"])


class _OneSidedCell:
    """aihwkit's OneSidedUnitCell: w = w_1 - w_0, both devices only pulsed up, with refresh."""

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, up: Any, kernels: _Kernels):
        devs = list(cfg.unit_cell_devices)
        if not devs:
            raise _refuse(where, "OneSidedUnitCell without unit_cell_devices")
        if bool(getattr(cfg, "copy_inverted", False)):
            raise _refuse(where, "OneSidedUnitCell.copy_inverted is not implemented")
        inner = devs[0]  # C++ uses the first device for both (OneSidedRPUDeviceMetaParameter::initialize)
        self.devs = [_DeviceArray(copy.deepcopy(inner), shape, rng, where, kernels) for _ in range(2)]
        if any(a.persistent for a in self.devs) and int(cfg.refresh_every) > 0:
            raise _refuse(where, "refresh of devices with write noise (aihwkit refuses it too)")
        self.cfg = cfg
        self.up = up
        self.gran = weight_granularity(cfg)
        self.refresh_up = cfg.refresh_update
        _check_pulse_type(self.refresh_up, where)
        self.refresh_io = cfg.refresh_forward
        from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

        self._mvm = AnalogMVM
        self.n_samples = 0  # current_update_idx_
        self.refreshes = 0

    def weights(self) -> Tensor:
        return self.devs[1].w - self.devs[0].w

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        self.devs[1].set_weights(w.clamp(min=0), rng)
        self.devs[0].set_weights((-w).clamp(min=0), rng)
        self.n_samples = 0

    def update_rows(self, u: Tensor, lr: float, rng: _Rng) -> float:
        """Row-by-row transfer of u (out, in), as ``in`` samples."""
        return self._apply_moments(_rowwise_moments(u, lr, self.up, self.gran, self.devs[0].k), u.shape[1], rng,
                                   one_sign=True)

    def update(self, x: Tensor, d: Tensor, lr: float, rng: _Rng) -> float:
        return self._apply_moments(_coincidence_moments(x, d, lr, self.up, self.gran, rng), x.shape[0], rng)

    def _apply_moments(self, moments: tuple, b: int, rng: _Rng, one_sign: bool = False) -> float:
        """Pulse the pair, then refresh. ``one_sign``: no pair has both up and down moments (a
        row-by-row transfer), so one kernel can serve both devices (:meth:`_DeviceArray.pulse_pair`)."""
        mu_u, mu_d, m2_u, m2_d, sc = moments
        plus, minus = self.devs[1], self.devs[0]
        if one_sign and plus.pairs_with(minus):
            pulses = plus.pulse_pair(minus, mu_u, mu_d, m2_u, m2_d, rng, m2_scale=sc)
        else:
            pulses = plus.pulse(mu_u, None, m2_u, None, rng, m2_scale=sc, post=True)  # raise w: g_plus up
            pulses += minus.pulse(mu_d, None, m2_d, None, rng, m2_scale=sc, post=True)  # lower w: g_minus up
        every = int(self.cfg.refresh_every)
        if every > 0:
            if bool(self.cfg.units_in_mbatch):
                every *= b
            crossings = (self.n_samples + b) // every - self.n_samples // every
            for _ in range(min(crossings, 4)):
                pulses += self._refresh(rng)
        self.n_samples += b
        return pulses

    def _plain_read(self) -> tuple[float, float, float] | None:
        """(out_noise, absolute ADC step, out_bound) when the refresh read is output noise + ADC only."""
        io = self.refresh_io
        name = str(getattr(io.mv_type, "name", io.mv_type)).upper()
        if bool(io.is_perfect) or name == "IDEAL":
            return 0.0, 0.0, 1e30
        if name != "ONE_PASS" or float(io.inp_noise) > 0 or float(io.out_asymmetry) != 0 or \
                bool(io.out_sto_round) or float(io.w_noise) > 0 or float(getattr(io, "out_noise_std", 0.0)) > 0 \
                or float(getattr(io, "out_nonlinearity", 0.0)) > 0 or float(getattr(io, "ir_drop", 0.0)) > 0:
            return None
        bound = float(io.out_bound) if float(io.out_bound) > 0 else 1e30
        res = float(io.out_res)
        res = ((1.0 / res if res > 1.0 else res) * 2 * bound) if res > 0 else 0.0
        return float(io.out_noise), res, bound

    def _read(self, w: Tensor, rng: _Rng) -> Tensor:
        """A column-by-column read of one device array through the refresh forward (unit inputs),
        with aihwkit's AnalogMVM output stage (for refresh IO settings beyond noise + ADC)."""
        with _seeded(rng):
            _, out = self._mvm._finalize_output(out_values=w.clone(), io_pars=self.refresh_io)
        return out

    def _refresh(self, rng: _Rng) -> float:
        """OneSidedRPUDevice::refreshWeights, all columns at once."""
        plus, minus = self.devs[1], self.devs[0]
        w_max = abs(float(plus.cfg.w_max))
        w_min = abs(float(minus.cfg.w_max))  # also w_max, because of the one-sidedness
        hi, lo = float(self.cfg.refresh_upper_thres), float(self.cfg.refresh_lower_thres)
        plain = self._plain_read()
        if plain is not None:
            # only pairs whose devices are both near the lower threshold or above can be refreshed:
            # read those (7 sigma of read noise and one ADC step of margin)
            noise, res, bound = plain
            margin = 7 * noise + res
            cand = torch.minimum(plus.w - (lo * w_max - margin), minus.w - (lo * w_min - margin)) > 0
            n_cand = int(torch.count_nonzero(cand))  # (a bool sum casts to int64 first: 8x slower)
            if n_cand == 0:
                return 0.0
            cidx = None if n_cand > cand.numel() // 4 else cand.reshape(-1).nonzero().squeeze(1)

            def at(t: Tensor) -> Tensor:
                return t if cidx is None else t.reshape(-1)[cidx]

            crit, diff_p, diff_m = plus.k("_k_refresh_read", at(plus.w), at(minus.w),
                                          rng.bits(plus.shape if cidx is None else (n_cand,)), *plain,
                                          w_max=w_max, w_min=w_min, hi=hi, lo=lo)
            if cidx is not None:  # back to full arrays (few entries)
                full = torch.zeros(plus.shape, device=plus.device).reshape(-1)
                crit = full.index_copy(0, cidx, crit).reshape(plus.shape)
                diff_p = full.index_copy(0, cidx, diff_p).reshape(plus.shape)
                diff_m = full.index_copy(0, cidx, diff_m).reshape(plus.shape)
        else:
            wp, wm = self._read(plus.w, rng), self._read(minus.w, rng)
            crit, diff_p, diff_m = _k_refresh_read(wp, wm, torch.zeros_like(wp, dtype=torch.int64), 0.0, 0.0,
                                                   1e30, w_max, w_min, hi, lo)
        index = crit.reshape(-1).nonzero().squeeze(1)
        n_ref = int(index.numel())
        if n_ref == 0:
            return 0.0
        self.refreshes += n_ref
        plus.reset_at(index, rng)
        minus.reset_at(index, rng)
        pulses = 2.0 * n_ref  # the two RESETs of each refreshed pair
        n_in = plus.shape[1]
        for dev, diff in ((plus, diff_p), (minus, diff_m)):
            # per column j: x = e_j, d = diff[:, j], lr = 1 (sign: increase), refresh update params
            sub = diff.reshape(-1)[index]
            keep = sub > 0
            idx, sub = index[keep], sub[keep]
            if idx.numel() == 0:
                continue
            d_max = diff.amax(dim=0)  # (in,)
            ones = torch.ones_like(d_max)
            bl, a, b = _train_constants(ones, d_max, 1.0, self.refresh_up, self.gran)
            px = _probabilities(ones[:, None], b, self.refresh_up)[:, 0]  # (in,)
            cols = idx % n_in
            p = _probabilities(sub[:, None], a[cols], self.refresh_up)[:, 0] * px[cols]
            mu = bl[cols] * p
            pulses += dev.pulse(mu, None, mu * p, None, rng, index=idx)
        return pulses

    def hidden_parameters(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for k, dev in enumerate(self.devs):
            for name, v in dev.hidden_parameters().items():
                out[f"{name}_{k}"] = v
            out[f"hidden_weights_{k}"] = dev.w
        return out

    def load_hidden_parameters(self, state: dict[str, Tensor], weights: Tensor | None) -> None:
        for k, dev in enumerate(self.devs):
            sub = {name[: -len(f"_{k}")]: v for name, v in state.items() if name.endswith(f"_{k}")}
            dev.load_hidden_parameters(sub)
            if "hidden_weights" in sub:
                dev.set_apparent(sub["hidden_weights"])

    def to(self, device: torch.device) -> None:
        for dev in self.devs:
            dev.to(device)

    def extra_state(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "refreshes": self.refreshes, "calls": [d.calls for d in self.devs]}

    def load_extra_state(self, s: dict[str, Any]) -> None:
        self.n_samples, self.refreshes = int(s["n_samples"]), int(s["refreshes"])
        for dev, c in zip(self.devs, s["calls"]):
            dev.calls = int(c)


class _MixedPrecisionCell:
    """aihwkit's MixedPrecisionCompound: digital chi accumulator, thresholded pulsed transfer."""

    def __init__(self, cfg: Any, shape: tuple[int, int], rng: _Rng, where: str, up: Any, kernels: _Kernels):
        inner = cfg.device
        if hasattr(inner, "unit_cell_devices") or not hasattr(inner, "dw_min"):
            raise _refuse(where, f"MixedPrecisionCompound over {type(inner).__name__} is not implemented "
                                 "(only over a single pulsed device)")
        self.arr = _DeviceArray(inner, shape, rng, where, kernels)
        if self.arr.kind == "ExpStepDevice" and self.arr.exact_pulses:
            raise _refuse(where, "mixed precision over an ExpStep device with large nonlinear steps")
        self.cfg = cfg
        self.shape = shape
        gran = float(getattr(cfg, "granularity", 0.0) or 0.0)
        self.gran = gran if gran > 0 else weight_granularity(inner)
        self.up = copy.deepcopy(up)
        self.up.update_management = True  # MixedPrecRPUDeviceBase::setUpPar
        self.up.update_bl_management = True
        self.chi = torch.zeros(shape, device=rng.device)
        self.n_samples = 0  # current_update_index_
        self.row = 0  # current_row_index_

    def weights(self) -> Tensor:
        return self.arr.w

    def set_weights(self, w: Tensor, rng: _Rng) -> None:
        self.arr.set_weights(w, rng)
        self.chi = torch.zeros_like(self.chi)
        self.n_samples = 0
        self.row = 0

    def _quantize(self, v: Tensor, bins: int, sto: bool, rng: _Rng) -> Tensor:
        if bins <= 0:
            return v
        half = float(bins // 2)
        width = v.abs().amax(dim=1, keepdim=True) / half
        width = torch.where(width == 0, 1.0, width)
        shift = (rng.rand(v.shape) - 0.5) if sto else 0.0
        return torch.round(v / width + shift).clamp(-half, half) * width

    def update(self, x: Tensor, d: Tensor, lr: float, rng: _Rng) -> float:
        c = self.cfg
        x = self._quantize(x, int(c.n_x_bins), bool(c.stoc_round_x), rng)
        d = self._quantize(d, int(c.n_d_bins), bool(c.stoc_round_d), rng)
        return self._accumulate(lambda lo, hi: self.chi.addmm_(d[lo:hi].T, x[lo:hi], alpha=lr), x.shape[0], rng)

    def update_rows(self, u: Tensor, lr: float, rng: _Rng) -> float:
        """Row-by-row transfer of u (out, in): ``update(I, u^T)`` without the identity product. Sample
        i adds lr u[:, i] to chi's column i (x = I is unchanged by the x quantisation: each row's one
        non-zero is its maximum, and stochastic rounding never moves a value by half a bin)."""
        c = self.cfg
        d = self._quantize(u.T, int(c.n_d_bins), bool(c.stoc_round_d), rng)  # (in, out), per sample

        def add(lo: int, hi: int) -> None:
            self.chi[:, lo:hi] += lr * d[lo:hi].T

        return self._accumulate(add, u.shape[1], rng)

    def _accumulate(self, add: Callable[[int, int], Any], b: int, rng: _Rng) -> float:
        """Accumulate b samples into chi (``add(lo, hi)`` adds samples lo..hi-1), transferring where
        aihwkit does: after every ``transfer_every * b`` samples counted over all updates."""
        every = int(self.cfg.transfer_every) * b
        # samples s (0-based in this batch) after whose accumulation aihwkit transfers
        stops: list[int] = []
        if every > 0:
            s = (-self.n_samples) % every
            while s < b:
                if self.n_samples + s > 0:
                    stops.append(s)
                s += every
        pulses, start = 0.0, 0
        for s in stops:
            add(start, s + 1)
            start = s + 1
            pulses += self._transfer(rng)
        if start < b:
            add(start, b)
        self.n_samples += b
        self.arr.post_update(rng)
        return pulses

    def _transfer(self, rng: _Rng) -> float:
        """MixedPrecRPUDeviceBase::transfer + MixedPrecRPUDevice::forwardUpdate, all rows at once."""
        c = self.cfg
        lr = float(c.transfer_lr)
        n_rows = self.shape[0]
        n_tr = int(c.n_rows_per_transfer)
        if n_tr == 0 or lr == 0:
            return 0.0
        n_tr = n_rows if n_tr < 0 else min(n_tr, n_rows)
        start = self.row
        if bool(c.random_row) and n_tr < n_rows:
            start = int(torch.randint(0, n_rows, (1,), generator=rng.cpu))
        self.row = (start + n_tr) % n_rows
        chi = self.chi
        n_in = self.shape[1]
        rows_mask = None
        if n_tr < n_rows:
            sel = ((torch.arange(n_tr) + start) % n_rows).to(chi.device)
            rows_mask = torch.zeros(n_rows, dtype=torch.bool, device=chi.device)
            rows_mask[sel] = True
        chi_abs = chi.abs()
        big = chi_abs >= self.gran  # only these devices get pulses (|trunc(chi / granularity)| >= 1)
        if rows_mask is not None:
            big = big & rows_mask[:, None]
        n_big = int(torch.count_nonzero(big))
        if n_big == 0:
            return 0.0
        n_max = torch.trunc(chi_abs.amax(dim=1) / self.gran)  # max_i |trunc(chi_ji / granularity)|
        # pulse trains of row j: x = n[j, :], d = e_j, lr = granularity * transfer_lr
        bl, a, b = _train_constants(n_max, torch.ones_like(n_max), self.gran * lr, self.up, self.gran)
        pd = _probabilities(torch.ones_like(a)[:, None], a, self.up)[:, 0]
        res = float(getattr(self.up, "res", 0) or 0)
        res = (1.0 / res if res > 1.0 else res) if not bool(getattr(self.up, "sto_round", False)) else 0.0
        if n_big > chi.numel() // 4:  # dense: every device through the kernels
            left, mu_u, mu_d, m2_u, m2_d = self.arr.k("_k_mp_prepare", chi, self.gran, bl[:, None], b[:, None],
                                                      pd[:, None], res=res)
            self.chi = left if rows_mask is None else torch.where(rows_mask[:, None], left, chi)
            return self.arr.pulse(mu_u, mu_d, m2_u, m2_d, rng, one_sign=True)
        index = big.reshape(-1).nonzero().squeeze(1)  # sparse: only the devices that pass their step
        rows = index // n_in
        flat = chi.reshape(-1)
        left, mu_u, mu_d, m2_u, m2_d = self.arr.k("_k_mp_prepare", flat[index], self.gran, bl[rows], b[rows],
                                                  pd[rows], res=res)
        self.chi = flat.index_copy(0, index, left).reshape(self.shape)
        return self.arr.pulse(mu_u, mu_d, m2_u, m2_d, rng, index=index, one_sign=True)

    def hidden_parameters(self) -> dict[str, Tensor]:
        out = self.arr.hidden_parameters()
        out["hidden_weights_chi"] = self.chi
        return out

    def load_hidden_parameters(self, state: dict[str, Tensor], weights: Tensor | None) -> None:
        self.arr.load_hidden_parameters(state)
        if "hidden_weights_chi" in state:
            self.chi = state["hidden_weights_chi"].detach().to(self.chi.device, torch.float32).clone()
        if weights is not None:
            self.arr.set_apparent(weights)

    def to(self, device: torch.device) -> None:
        self.arr.to(device)
        self.chi = self.chi.to(device)

    def extra_state(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "row": self.row, "calls": self.arr.calls}

    def load_extra_state(self, s: dict[str, Any]) -> None:
        self.n_samples, self.row, self.arr.calls = int(s["n_samples"]), int(s["row"]), int(s["calls"])


def _build_cell(device_cfg: Any, shape: tuple[int, int], rng: _Rng, preset: str, up: Any, kernels: _Kernels):
    mro = [c.__name__ for c in type(device_cfg).__mro__]
    where = f"preset {preset} (device {type(device_cfg).__name__})"
    if "MixedPrecisionCompound" in mro:
        return _MixedPrecisionCell(device_cfg, shape, rng, where, up, kernels)
    if "OneSidedUnitCell" in mro and "DifferenceUnitCell" not in mro:
        return _OneSidedCell(device_cfg, shape, rng, where, up, kernels)
    if hasattr(device_cfg, "unit_cell_devices") or hasattr(device_cfg, "device"):
        raise _refuse(where, f"compound device {type(device_cfg).__name__} (transfer / Tiki-Taka / vector / "
                             "reference cells) is not implemented")
    return _SingleCell(device_cfg, shape, rng, where, up, kernels)


def _quantize_(x: Tensor, res: float, bound: float) -> Tensor:
    """aihwkit's UniformQuantize (deterministic rounding) in place: ``res`` states (or a step) over
    ``[-bound, bound]``; same operations in the same order, so the same values."""
    res = 1 / res if res > 1.0 else res
    res *= 2 * bound
    return x.div_(res).round_().mul_(res)


@functools.lru_cache(maxsize=None)
def _analog_mvm() -> type:
    """aihwkit's pure-torch ``AnalogMVM`` with the bound management of aihwkit's C++ tiles.

    Iterative bound management retries an MVM at half the input scale when an output clips at the
    ADC bound. ``AnalogMVM`` tests the whole batch and retries all of it; the C++ tile (the reference)
    computes one vector at a time and retries only the vectors that clip. The others keep their
    scale, hence their output noise relative to the signal (half of what a batch-wide retry leaves
    them). This subclass does the retry per vector; everything else is aihwkit's.
    """
    from aihwkit.simulator.parameters.enums import AnalogMVType, BoundManagementType
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM, UniformQuantize

    class PerVectorAnalogMVM(AnalogMVM):
        @classmethod
        def _finalize_output(cls, out_values: Tensor, io_pars: Any, out_noise_values: Tensor | None = None,
                             **kwargs: Any):
            """AnalogMVM._finalize_output with the bound test per vector (last dimension)."""
            if io_pars.bound_management != BoundManagementType.ITERATIVE:
                return super()._finalize_output(out_values, io_pars, out_noise_values, **kwargs)
            bound = io_pars.out_bound if io_pars.out_bound > 0 else float("inf")
            if io_pars.out_asymmetry != 0.0:
                out_values[out_values < 0] *= 1.0 - io_pars.out_asymmetry
            if io_pars.out_noise > 0.0 or out_noise_values is not None:
                if out_noise_values is None:
                    out_values += io_pars.out_noise * torch.randn_like(out_values)
                else:
                    out_values += torch.randn_like(out_values) * out_noise_values.view(
                        1, -1, *((1,) * (out_values.ndim - 2)))
            if io_pars.out_res > 0:
                if io_pars.out_sto_round:
                    out_values = UniformQuantize.apply(out_values, io_pars.out_res, io_pars.out_bound, True)
                else:  # UniformQuantize's operations, in place (out_values is this MVM's own tensor)
                    _quantize_(out_values, io_pars.out_res, io_pars.out_bound)
            passed = out_values.abs().amax(dim=-1) <= bound  # = all(-bound <= o <= bound), NaN fails
            return passed, out_values.clamp_(min=-bound, max=bound)

        @classmethod
        def _prepare_input(cls, input_: Tensor, scale: Tensor, scaling: bool, with_asymmetry: bool,
                           io_pars: Any) -> Tensor:
            """AnalogMVM._prepare_input (the DAC: scale, quantise, clip) without its three copies of the
            input: the same operations in place, so the same values (a test compares them). Input
            noise, asymmetry and stochastic rounding take aihwkit's own path."""
            if io_pars.inp_noise > 0.0 or with_asymmetry or (io_pars.inp_res > 0 and io_pars.inp_sto_round):
                return super()._prepare_input(input_, scale, scaling, with_asymmetry, io_pars)
            x = input_ * scale if scaling else input_.clone()
            if io_pars.inp_res > 0:
                _quantize_(x, io_pars.inp_res, io_pars.inp_bound)
            if io_pars.inp_bound > 0:  # aihwkit: where(|x| <= bound, x, clamp(x)), the same values
                x.clamp_(-io_pars.inp_bound, io_pars.inp_bound)
            return x

        @classmethod
        def matmul(cls, weight: Tensor, input_: Tensor, io_pars: Any, trans: bool = False, is_test: bool = False,
                   **fwd_pars: Any) -> Tensor:
            if (io_pars.is_perfect or io_pars.mv_type == AnalogMVType.IDEAL
                    or io_pars.bound_management != BoundManagementType.ITERATIVE):
                return super().matmul(weight, input_, io_pars, trans, is_test, **fwd_pars)
            if input_.ndim != 2:  # vectors along the last dimension
                flat = cls.matmul(weight, input_.reshape(-1, input_.shape[-1]), io_pars, trans, is_test, **fwd_pars)
                return flat.reshape(*input_.shape[:-1], flat.shape[-1])
            n, n_out = input_.shape[0], weight.shape[int(trans)]
            nm = cls._compute_noise_management(input_=input_, nm_type=io_pars.noise_management, io_pars=io_pars)
            nm = (nm.clone() if isinstance(nm, Tensor)
                  else torch.full((n, 1), float(nm), device=input_.device, dtype=input_.dtype))
            if io_pars.inp_noise <= 0.0 and bool((nm == 0.0).all()):
                return torch.zeros(n, n_out, device=input_.device, dtype=input_.dtype)
            nm[nm <= 0.0] = 1.0
            inp_res = io_pars.inp_res
            if inp_res > 0:
                inp_res = (1 / inp_res if inp_res > 1.0 else inp_res) * 2.0 * io_pars.inp_bound
            out: Tensor | None = None
            pending: Tensor | None = None  # rows still to retry; None: the first pass, all rows
            reduction = 1.0  # the input scale is divided by this (doubled per retry), as in the C++
            while pending is None or pending.numel():
                rows = (lambda t: t) if pending is None else (lambda t: t[pending])
                scale = 1.0 / (rows(nm) * reduction)
                passed, o = cls._compute_analog_mv(weight=weight, input_=rows(input_), trans=trans, scale=scale,
                                                   scaling=True, is_test=is_test, io_pars=io_pars, **fwd_pars)
                o = o * (io_pars.out_scale / scale)
                if reduction > io_pars.max_bm_factor or (inp_res > 0 and reduction > io_pars.max_bm_res / inp_res):
                    passed = torch.ones_like(passed)  # give up: keep the clipped outputs
                if pending is None:  # the failed rows are overwritten by their retries
                    out, pending = o, (~passed).nonzero().squeeze(1)
                else:
                    out[pending[passed]] = o[passed]
                    pending = pending[~passed]
                reduction *= 2.0
            return out

    return PerVectorAnalogMVM


class _seeded:
    """Run aihwkit's AnalogMVM (global-RNG noise) on a seed drawn from the engine's generator,
    leaving the global RNG as it was."""

    def __init__(self, rng: _Rng):
        self.rng = rng
        self.fork = None

    def __enter__(self) -> None:
        dev = self.rng.device
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        self.fork = torch.random.fork_rng(devices=devices)
        self.fork.__enter__()
        seed = self.rng.seed()
        torch.manual_seed(seed)
        if dev.type == "cuda":
            torch.cuda.manual_seed(seed)

    def __exit__(self, *exc: Any) -> None:
        self.fork.__exit__(*exc)


# -- the engine ----------------------------------------------------------------------------------


class TorchPulsedEngine:
    """The fast engine of :class:`analogff.crossbar.Crossbar`: aihwkit preset physics in batched torch.

    Args:
        in_features: rows (x size).
        out_features: columns (d size).
        rpu_config: the aihwkit preset (a SingleRPUConfig / UnitCellRPUConfig / DigitalRankUpdateRPUConfig).
        seed: seeds every random draw (device-to-device variations, pulses, MVM noise).
        device: torch device of the state (``"cpu"`` or ``"cuda"``); :meth:`to` moves it.
        compile: fuse the per-device kernels with ``torch.compile`` (compiled once per process, a
            few seconds to a minute; then several times faster). None: ``ANALOGFF_COMPILE``
            (``0``/``1``/``auto``), auto compiling tiles of >= 65536 devices.

    Raises:
        ValueError: the preset uses a device model or option this engine does not simulate
            (naming the preset and the device class; use ``engine="aihwkit"``).
    """

    def __init__(self, in_features: int, out_features: int, rpu_config: Any, seed: int = 0,
                 device: str | torch.device = "cpu", compile: bool | None = None):
        from aihwkit.exceptions import ConfigError
        from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

        self.in_features, self.out_features = int(in_features), int(out_features)
        self.rpu_config = rpu_config
        self.preset = type(rpu_config).__name__
        self.device = torch.device(device)
        self.rng = _Rng(seed, self.device)
        self._mvm = _analog_mvm()
        where = f"preset {self.preset} (device {type(rpu_config.device).__name__})"
        up = rpu_config.update
        _check_pulse_type(up, where)
        self.f_io = copy.deepcopy(rpu_config.forward)
        self.b_io = copy.deepcopy(getattr(rpu_config, "backward", rpu_config.forward))
        # C++ IOMetaParameter::initializeForBackward switches bound management off for the backward
        from aihwkit.simulator.parameters.enums import BoundManagementType

        self.b_io.bound_management = BoundManagementType.NONE
        try:
            AnalogMVM.check_support(self.f_io)
            AnalogMVM.check_support(self.b_io)
        except ConfigError as exc:
            raise _refuse(where, f"its periphery: {exc}") from None
        if compile is None:
            compile = _compile_default(self.in_features * self.out_features, self.device)
        self.kernels = _Kernels(bool(compile))
        self.cell = _build_cell(rpu_config.device, (self.out_features, self.in_features), self.rng, self.preset, up,
                                self.kernels)

    # -- MVMs --------------------------------------------------------------------------------
    def forward(self, x: Tensor, is_test: bool = False) -> Tensor:
        x = x.detach().to(self.device, torch.float32)
        with torch.no_grad(), _seeded(self.rng):
            return self._mvm.matmul(self.cell.weights(), x, self.f_io, False, is_test=is_test)

    def backward(self, d: Tensor) -> Tensor:
        d = d.detach().to(self.device, torch.float32)
        with torch.no_grad(), _seeded(self.rng):
            return self._mvm.matmul(self.cell.weights(), d, self.b_io, True, is_test=False)

    # -- update ------------------------------------------------------------------------------
    def update(self, x: Tensor, d: Tensor, lr: float) -> int:
        """``w <- w - lr d^T x`` as device pulses; returns the number of pulses applied."""
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        x = x.detach().to(self.device, torch.float32).reshape(-1, self.in_features)
        d = d.detach().to(self.device, torch.float32).reshape(-1, self.out_features)
        if x.shape[0] == 0 or lr == 0:
            return 0
        with torch.no_grad():
            return int(round(self.cell.update(x, d, float(lr), self.rng)))

    def update_rows(self, u: Tensor, lr: float) -> int:
        """``w <- w - lr u`` for a dense update matrix u (out, in), transferred row by row: row i is
        driven alone (value 1) with the column errors ``u[:, i]``, as ``update(I, u.T, lr)`` does
        (same pulse statistics), without its (in x in) GEMMs. Returns the number of pulses."""
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        u = u.detach().to(self.device, torch.float32).reshape(self.out_features, self.in_features).contiguous()
        if lr == 0:
            return 0
        with torch.no_grad():
            return int(round(self.cell.update_rows(u, float(lr), self.rng)))

    # -- weights and state -------------------------------------------------------------------
    def get_weights(self) -> Tensor:
        return self.cell.weights().clone()

    def set_weights(self, w: Tensor) -> None:
        w = torch.as_tensor(w).detach().to(self.device, torch.float32).reshape(self.out_features, self.in_features)
        self.cell.set_weights(w, self.rng)

    def device_state(self) -> dict[str, Tensor]:
        """Per-device hidden parameters under aihwkit's ``get_hidden_parameters()`` names.

        The tensors are the engine's own (read them, do not modify them; clone to keep a copy:
        :meth:`state` does). Cheap: the crossbar reads the bounds after every update."""
        return self.cell.hidden_parameters()

    def load_device_state(self, state: dict[str, Tensor], weights: Tensor | None = None) -> None:
        """Load hidden parameters (e.g. an aihwkit tile's); ``weights`` sets the apparent weights as is."""
        self.cell.load_hidden_parameters(state, None if weights is None else torch.as_tensor(weights))

    def state(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: weights, device state, counters, RNG."""
        return {"weights": self.get_weights().cpu().clone(),
                "device_state": {k: v.detach().cpu().clone() for k, v in self.device_state().items()},
                "cell": self.cell.extra_state(), "rng": self.rng.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_device_state(state["device_state"], weights=state["weights"])
        self.cell.load_extra_state(state["cell"])
        self.rng.set_state(state["rng"])

    def to(self, device: str | torch.device) -> "TorchPulsedEngine":
        device = torch.device(device)
        if device != self.device:
            self.cell.to(device)
            self.rng = self.rng.to(device)
            self.device = device
        return self
