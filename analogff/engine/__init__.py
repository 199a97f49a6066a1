"""The torch engine: aihwkit's pulsed-update physics in batched torch (stochastic pulse trains, in aggregate).

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
alone, as aihwkit's C++ tiles do (:func:`analogff.engine.mvm._analog_mvm`). The update applies a mini-batch in two halves, in order
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
draws are counter-based: the generator gives each kernel call one 64-bit key, and the kernel makes
64 bits per device from (key, device index) with SplitMix64's mixer, turned into a uniform and two
normals in place (no random array is written to memory and read back). Steps 2-3 are pure
element-wise kernels, compiled on big tiles (``compile=``, ``ANALOGFF_COMPILE``; on the CPU as
AOTInductor packages cached on disk, :mod:`.aot`; elsewhere ``torch.compile``), eager otherwise
(same numbers up to float rounding).

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

Approximations (measured against aihwkit in tests/test_engine_fidelity.py): devices are independent
(aihwkit's compressed trains are shared by a row / a column, which correlates their devices); the
order of the pulses within each half batch is replaced by the closed forms (both signs
interleaved uniformly); the cycle-to-cycle noise of a run is added at its end (with a
first-order correction for the convexity of the ExpStep step); refresh and transfer happen at the
end of a batch, where aihwkit does them after the sample that completes the period.

Everything else (transfer compounds: Tiki-Taka, TTv2, AGAD; vector / reference unit cells;
PowStep, PiecewiseStep, ideal / floating-point devices; device drift, corrupt devices, other
pulse types) is refused with a ``ValueError`` naming the preset and the device class and pointing
to ``engine="aihwkit"``.

Layout (one concept a module):

* :mod:`.pulse_trains`: aihwkit's pulse-train constants and probabilities (``weight_granularity``,
  ``pulse_trains``, ``expected_pulses``, ``_train_constants``, ``_probabilities``);
* :mod:`.rng`: the random streams (``_Rng``), the kernels' counter-based bits and their unpacking;
* :mod:`.kernels`: compile dispatch (``Kernels(compile)(fn, *args)``) and the kernel helpers
  every model shares (``_pulse_draw``, ``_bridge``);
* :mod:`.aot`: the compiled kernels' disk cache (``PackageCache``: one AOTInductor package per
  kernel signature; ``static`` marks floats that are baked in);
* :mod:`.models`: one module per aihwkit device model behind :class:`.models.base.DeviceModel`,
  found through the registry ``models.MODELS`` (keyed by the aihwkit class name);
* :mod:`.device_array`: ``DeviceArray``, one device per cross-point (``pulse``, ``set_weights``,
  ``hidden_parameters``, ``reset_at``, ``post_update``, ...), its physics from its model;
* :mod:`.moments`: coincidence moments of a batch and of a row-by-row transfer;
* :mod:`.cells`: unit cells (single device, one-sided PCM pair with refresh, mixed precision),
  found through the registry ``cells.CELLS`` (keyed by the aihwkit compound class) by ``build_cell``;
* :mod:`.mvm`: the MVM (``_analog_mvm()``, per-vector bound management; ``_seeded``);
* :mod:`.engine`: :class:`TorchPulsedEngine`;
* :mod:`.refuse`: ``_refuse(where, problem)``, the ValueError of everything not simulated;
* :mod:`.reads`: ``Reads``, the tally of array reads beyond one pass per vector.

Counting reads. The crossbar counts one pass per vector of each ``forward`` / ``backward`` itself;
every other read the simulation performs goes into the engine's :class:`~.reads.Reads` tally
(``engine.reads``; each cell gets the same object as ``cell.reads``), and
:meth:`TorchPulsedEngine.take_reads` returns and resets it after each engine call, the crossbar
adding it to its counters (``Crossbar._add_reads``):

* bound-management retries: :func:`.mvm._analog_mvm`'s ``matmul(..., reads=)`` adds each retry
  pass (one MVM per retried vector, ``in`` DAC and ``out`` ADC conversions, ``2 in out`` devices)
  with its per-row ``(V / V_read)^2`` (``Reads.add_own_pass``, ``rows_v2``), priced by the
  crossbar with the conductances of its array;
* the PCM refresh (:meth:`.cells.one_sided.OneSidedCell._count_refresh_reads`): both arrays read
  column by column, ``Reads.add(mvms, dac_conversions, adc_conversions, device_reads, v2, v2g_rel)``;
* a new cell that reads an array (a transfer reading its fast array A through its own IO) does the
  same: ``self.reads.add(mvms=k, dac_conversions=..., adc_conversions=k * out, device_reads=...,
  v2=sum over read devices of (V / V_read)^2, v2g_rel=sum of (V / V_read)^2 * g / g_span)``, ``g /
  g_span`` the device's weight over its bound clipped to [0, 1] (``Crossbar._g_rel``'s mapping); the
  crossbar adds ``V_read^2 (g_min v2 + (g_max - g_min) v2g_rel)`` to ``read_v2g_W``.

Integer counts are host ints (no sync); ``v2`` / ``v2g_rel`` / ``rows_v2`` may be tensors on the
engine's device, converted when the counters are read. Counting draws no random number.
"""

from __future__ import annotations

from .cells import CELLS, build_cell
from .device_array import DeviceArray
from .engine import TorchPulsedEngine
from .kernels import Kernels
from .models import MODELS, model_for
from .pulse_trains import PulseTrains, expected_pulses, pulse_trains, weight_granularity

__all__ = ["CELLS", "MODELS", "DeviceArray", "Kernels", "PulseTrains", "TorchPulsedEngine", "build_cell",
           "expected_pulses", "model_for", "pulse_trains", "weight_granularity"]
