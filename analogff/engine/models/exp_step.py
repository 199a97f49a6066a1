"""aihwkit's ExpStepDevice: the step ``s (1 - A exp(+-gamma z))``, ``z = 2 a w / (b_max - b_min) + b``,
makes ``E = A exp(gamma z)`` a logistic function of the pulse number, so a run of pulses has a
closed form (:func:`_exp_closed`). Small steps (ReRAM ES): up and down runs one after the other
(:func:`_k_exp`); big, strongly nonlinear steps (PCM): integer counts, the first pulses one by one
(:func:`_k_exp_exact`), and a one-sided pair's transfer in one kernel (:func:`_k_exp_exact_pair`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..aot import static
from ..kernels import _bridge, _pulse_draw
from ..moments import SignedMoments, split_by_sign
from ..rng import _bits, _unpack
from .base import DeviceModel


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


@static("A_up", "A_down", "g_up", "g_down")  # torch.where(up, A_up, A_down) makes a float32 tensor
def _k_exp(hidden: Tensor, app: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float,
           key: Tensor,
           su: Tensor, sd: Tensor, zc: Tensor, lo: Tensor, hi: Tensor, active: Tensor, decay: Tensor,
           reset_bias: Tensor, A_up: float, A_down: float, g_up: float, g_down: float, es_b: float, sigma: float,
           add: float, slope: float, cplx: bool, wn: float, persistent: bool, has_decay: bool, up_first: bool,
           one_sign: bool = False):
    """ExpStep (small steps): up and down runs in closed form, one after the other.

    ``one_sign``: no device gets pulses of both signs (a row-by-row or mixed-precision transfer: one
    sample per device), so one run per device, of its own sign, does it; the other run would leave
    the device exactly as it is. Half the work, the same result. ``key``: the call's random key.
    """
    u, z1, z2 = _unpack(_bits(key, hidden))
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
    return h, app, nu + nd


@static("A_up", "A_down", "g_up", "g_down")
def _k_exp_signed(hidden: Tensor, app: Tensor, mu: Tensor, m2: Tensor, m2_scale: float, key: Tensor, su: Tensor,
                  sd: Tensor, zc: Tensor, lo: Tensor, hi: Tensor, active: Tensor, decay: Tensor, reset_bias: Tensor,
                  A_up: float, A_down: float, g_up: float, g_down: float, es_b: float, sigma: float, add: float,
                  slope: float, cplx: bool, wn: float, persistent: bool, has_decay: bool):
    """:func:`_k_exp` (``one_sign``) on :class:`analogff.engine.moments.SignedMoments`, the four
    moment arrays formed here (:func:`split_by_sign`)."""
    mu_u, mu_d, m2_u, m2_d = split_by_sign(mu, m2)
    return _k_exp(hidden, app, mu_u, mu_d, m2_u, m2_d, m2_scale, key, su, sd, zc, lo, hi, active, decay, reset_bias,
                  A_up, A_down, g_up, g_down, es_b, sigma, add, slope, cplx, wn, persistent, has_decay, up_first=False,
                  one_sign=True)


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


def _exact_draws(persistent: bool, n_exact: int) -> int:
    """Random draws per device of :func:`_k_exp_exact`: 3 with write noise or more than 2 exact
    pulses, else 2."""
    return 3 if (persistent or n_exact > 2) else 2


def _k_exp_exact(hidden: Tensor, app: Tensor, mu: Tensor, m2: Tensor, m2_scale: float, key: Tensor, s: Tensor, zc: Tensor,
                 lo: Tensor, hi: Tensor, active: Tensor, A: float, gam: float, es_b: float, up: bool, sigma: float,
                 add: float, slope: float, cplx: bool, n_exact: int, wn: float, persistent: bool):
    """ExpStep with big, strongly nonlinear steps (PCM): pulses of one sign, integer counts.

    Counts: ``floor(mu - lam + u) + Poisson(lam)`` with ``lam`` the binomial variance less the
    ``f (1 - f)`` that the rounding carries (``f`` the fraction of ``mu``): Bernoulli where one train of
    one pulse is all there is, Poisson-like where all p are small; inverse CDF up to ``lam = 2``,
    rounding plus Gaussian above. The first ``n_exact`` pulses are applied one by one, each with
    its own cycle-to-cycle noise and clipping; the rest in closed form. ``key``: the call's random
    key, or the bits themselves (``(draws, *shape)`` int64, :func:`_exact_draws`).
    """
    bits = _bits(key, hidden, _exact_draws(persistent, n_exact)) if key.dim() == 0 else key
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
    return h, app, n


def _k_exp_exact_pair(hp: Tensor, hm: Tensor, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float,
                      kp: Tensor, km: Tensor, sp: Tensor, sm: Tensor, zcp: Tensor, zcm: Tensor, lop: Tensor, lom: Tensor,
                      hip: Tensor, him: Tensor, actp: Tensor, actm: Tensor, **kw: Any):
    """:func:`_k_exp_exact` on a one-sided pair that a transfer pulses on one device only (``mu_u``
    raises the plus device, ``mu_d`` the minus one, never both): one kernel on the pulsed device of
    each pair, with the random bits it would have drawn alone (keys ``kp``, ``km``). The other device is
    left as it is, which is what the kernel does to a device with no pulses (devices stay within their
    bounds), so the result is that of two kernels at half the work. Returns (plus, minus, pulses)."""
    sel = mu_u > 0

    def w(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(sel, a, b)

    draws = _exact_draws(False, kw["n_exact"])
    bits = torch.where(sel, _bits(kp, hp, draws), _bits(km, hm, draws))
    h, _, n = _k_exp_exact(w(hp, hm), w(hp, hm), w(mu_u, mu_d), w(m2_u, m2_d), m2_scale, bits,
                           w(sp, sm), w(zcp, zcm), w(lop, lom), w(hip, him), w(actp, actm), persistent=False, **kw)
    return torch.where(sel, h, hp), torch.where(sel, hm, h), n


def _k_exp_exact_pair_signed(hp: Tensor, hm: Tensor, mu: Tensor, m2: Tensor, m2_scale: float, kp: Tensor, km: Tensor,
                             sp: Tensor, sm: Tensor, zcp: Tensor, zcm: Tensor, lop: Tensor, lom: Tensor, hip: Tensor,
                             him: Tensor, actp: Tensor, actm: Tensor, **kw: Any):
    """:func:`_k_exp_exact_pair` on :class:`analogff.engine.moments.SignedMoments` (a row-by-row
    transfer), the four moment arrays formed here (:func:`split_by_sign`)."""
    mu_u, mu_d, m2_u, m2_d = split_by_sign(mu, m2)
    return _k_exp_exact_pair(hp, hm, mu_u, mu_d, m2_u, m2_d, m2_scale, kp, km, sp, sm, zcp, zcm, lop, lom, hip, him,
                             actp, actm, **kw)


class ExpStep(DeviceModel):
    def configure(self, arr: Any, cfg: Any, where: str) -> None:
        c = cfg
        arr.mult = True
        arr.complex_noise = arr.sigma > 0 and (float(c.dw_min_std_add) != 0 or float(c.dw_min_std_slope) != 0)
        arr.noise_add_slope = (float(c.dw_min_std_add), float(c.dw_min_std_slope)) if arr.complex_noise else (0.0, 0.0)

    def derive(self, arr: Any) -> None:
        c = arr.cfg
        b_diff = arr.bmax - arr.bmin
        # a 0 / 1 mask in float: compiled CPU kernels load (and store) bool tensors several times
        # slower than float ones
        arr.active = (b_diff > 0).to(b_diff.dtype)
        arr.zc = torch.where(b_diff > 0, 2 * float(c.a) / torch.where(b_diff > 0, b_diff, 1.0), 0.0)
        arr.es = (float(c.A_up), float(c.A_down), float(c.gamma_up), float(c.gamma_down), float(c.b))
        if arr.exact_pulses is None:
            arr.exact_pulses = 0 if self.discreteness(arr) < 0.1 else 2

    def discreteness(self, arr: Any) -> float:
        """Largest relative change of the ExpStep step (or of E) caused by one pulse over the nominal
        weight range: above ~10 % the pulses are counted as integers and the first ones applied one
        by one (PCM), below it the closed form is accurate (ReRAM ES: ~5 % at the very bound)."""
        c = arr.cfg
        A_up, A_down, g_up, g_down, es_b = arr.es
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

    def apply(self, arr: Any, hidden: Tensor, app: Tensor, at: Callable[[Tensor], Tensor], shape: tuple[int, ...],
              mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float, rng: Any, decay: bool,
              one_sign: bool) -> tuple[Tensor, Tensor, Tensor, bool]:
        A_up, A_down, g_up, g_down, es_b = arr.es
        cplx = arr.complex_noise
        add, slope = arr.noise_add_slope
        if arr.exact_pulses:
            h, w, n = arr.k(_k_exp_exact, hidden, app, mu_u, m2_u, m2_scale, rng.key(),
                            at(arr.p["dwmin_up"]), at(arr.zc), at(arr.bmin), at(arr.bmax), at(arr.active),
                            A=A_up, gam=g_up, es_b=es_b, up=True, sigma=arr.sigma, add=add, slope=slope,
                            cplx=cplx, n_exact=int(arr.exact_pulses), wn=arr.write_noise,
                            persistent=arr.persistent)
            return h, w, n, decay  # the decay (if any) is left to post_update
        h, w, n = arr.k(_k_exp, hidden, app, mu_u, mu_d, m2_u, m2_d, m2_scale, rng.key(),
                        at(arr.p["dwmin_up"]), at(arr.p["dwmin_down"]), at(arr.zc), at(arr.bmin),
                        at(arr.bmax), at(arr.active), at(arr.p["decay_scales"]), at(arr.p["reset_bias"]),
                        A_up=A_up, A_down=A_down, g_up=g_up, g_down=g_down, es_b=es_b, sigma=arr.sigma,
                        add=add, slope=slope, cplx=cplx, wn=arr.write_noise, persistent=arr.persistent,
                        has_decay=decay, up_first=arr.calls % 2 == 1,
                        one_sign=one_sign)
        return h, w, n, False

    def apply_signed(self, arr: Any, moments: SignedMoments, rng: Any, decay: bool) -> tuple[Tensor, Tensor, Tensor, bool]:
        """:meth:`apply` on the whole array with moments of one sign per device
        (:class:`analogff.engine.moments.SignedMoments`; :func:`_k_exp_signed`; exact pulses: split first)."""
        if arr.exact_pulses:
            return super().apply_signed(arr, moments, rng, decay)
        A_up, A_down, g_up, g_down, es_b = arr.es
        add, slope = arr.noise_add_slope
        h, w, n = arr.k(_k_exp_signed, arr.hidden, arr.w, moments.mu, moments.m2, moments.m2_scale, rng.key(),
                        arr.p["dwmin_up"], arr.p["dwmin_down"], arr.zc, arr.bmin, arr.bmax, arr.active,
                        arr.p["decay_scales"], arr.p["reset_bias"], A_up=A_up, A_down=A_down, g_up=g_up, g_down=g_down, es_b=es_b,
                        sigma=arr.sigma, add=add, slope=slope, cplx=arr.complex_noise, wn=arr.write_noise,
                        persistent=arr.persistent, has_decay=decay)
        return h, w, n, False

    def pairs_with(self, arr: Any, other: Any) -> bool:
        """Exact-pulse ExpStep devices of one configuration, nothing random after the pulses (no
        write noise, diffusion or decay)."""
        return all(a.kind == "ExpStepDevice" and bool(a.exact_pulses) and not a.persistent and not a.has_diffusion
                   and not a.has_decay for a in (arr, other)) and (arr.es, arr.sigma, arr.exact_pulses,
                                                                    arr.complex_noise) == \
            (other.es, other.sigma, other.exact_pulses, other.complex_noise)

    def pulse_pair(self, plus: Any, minus: Any, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, rng: Any,
                   m2_scale: float) -> float:
        """:func:`_k_exp_exact_pair` on a one-sided pair."""
        return self._pair(plus, minus, rng, _k_exp_exact_pair, (mu_u, mu_d, m2_u, m2_d, m2_scale))

    def pulse_pair_signed(self, plus: Any, minus: Any, moments: SignedMoments, rng: Any) -> float:
        """:meth:`pulse_pair` with :class:`analogff.engine.moments.SignedMoments`
        (:func:`_k_exp_exact_pair_signed`)."""
        return self._pair(plus, minus, rng, _k_exp_exact_pair_signed, moments)

    def _pair(self, plus: Any, minus: Any, rng: Any, kernel: Callable, moments: tuple) -> float:
        """One pair kernel (``kernel``: :func:`_k_exp_exact_pair` or its signed form) on ``moments``."""
        kp = rng.key()  # drawn in the order of the two pulse() calls
        km = rng.key()
        plus.calls += 1
        minus.calls += 1
        A_up, _, g_up, _, es_b = plus.es
        add, slope = plus.noise_add_slope
        hp, hm, n = plus.k(kernel, plus.hidden, minus.hidden, *moments, kp, km, plus.p["dwmin_up"],
                           minus.p["dwmin_up"], plus.zc, minus.zc, plus.bmin, minus.bmin, plus.bmax, minus.bmax,
                           plus.active, minus.active, A=A_up, gam=g_up, es_b=es_b, up=True, sigma=plus.sigma, add=add,
                           slope=slope, cplx=plus.complex_noise, n_exact=int(plus.exact_pulses), wn=0.0)
        plus.hidden = plus.w = hp
        minus.hidden = minus.w = hm
        return float(n.sum())
