"""The MVM: aihwkit's pure-torch ``AnalogMVM`` with the per-vector iterative bound management of
aihwkit's C++ tiles and in-place DAC/ADC quantisation; :class:`_seeded` runs it on the engine's
random stream."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .aot import static
from .reads import Reads, normalised_input
from .rng import _Rng, _bits, _unpack


def _quantize_(x: Tensor, res: float, bound: float) -> Tensor:
    """aihwkit's UniformQuantize (deterministic rounding) in place: ``res`` states (or a step) over
    ``[-bound, bound]``; same operations in the same order, so the same values."""
    res = 1 / res if res > 1.0 else res
    res *= 2 * bound
    return x.div_(res).round_().mul_(res)


def _flush_tiny_vectors(x: Tensor) -> Tensor:
    """x with every vector (last dimension) whose abs-max is below the smallest normal float set to
    zero. aihwkit's noise management scales a vector by 1 / abs-max: for such a vector (an error that
    underflowed) the scale is infinite and its zeros read 0 x inf = NaN. A zero vector is what any
    fp32 periphery that flushes subnormals holds, and aihwkit reads zero vectors without NaN."""
    if not x.is_floating_point() or x.numel() == 0:
        return x
    return torch.where(x.abs().amax(-1, keepdim=True) < torch.finfo(x.dtype).tiny, 0.0, x)


def plain_io(io: Any) -> bool:
    """Whether an MVM through ``io`` is only the DAC (scale, quantise, clip), the array, output noise
    and the ADC (quantise, clip): one pass, no input or weight noise, no asymmetries, no stochastic
    rounding, no output nonlinearity, IR drop or per-output noise. Such a read runs as two fused
    kernels (:func:`_k_dac`, :func:`_k_adc`) around the matrix product."""
    name = str(getattr(io.mv_type, "name", io.mv_type)).upper()
    return not (name != "ONE_PASS" or bool(io.is_perfect) or float(io.inp_noise) > 0 or float(io.w_noise) > 0
                or float(io.inp_asymmetry) != 0 or float(io.out_asymmetry) != 0 or bool(io.out_sto_round)
                or bool(io.inp_sto_round) or float(getattr(io, "out_nonlinearity", 0.0)) > 0
                or float(getattr(io, "ir_drop", 0.0)) > 0 or float(getattr(io, "out_noise_std", 0.0)) > 0)


def _step(res: float, bound: float) -> float:
    """aihwkit's quantisation step: ``res`` states (``res > 1``) or a fraction of the range [-bound, bound]."""
    return ((1.0 / res if res > 1.0 else res) * 2.0 * bound) if res > 0 else 0.0


@static("step", "bound")
def _k_dac(x: Tensor, scale: Tensor, step: float, bound: float) -> Tensor:
    """The DAC of a plain read (aihwkit's ``_prepare_input``, the same operations): the input times
    its noise-management scale, quantised to ``step`` (0: off), clipped to ``bound`` (0: off)."""
    x = x * scale
    if step > 0:
        x = torch.round(x / step) * step
    return x.clamp(-bound, bound) if bound > 0 else x


@static("step", "bound")
def _k_adc(out: Tensor, key: Tensor, noise: float, step: float, bound: float):
    """The output stage of a plain read (aihwkit's ``_finalize_output``): Gaussian output noise of
    std ``noise`` (counter-based normals from ``key``, :func:`~.rng._bits`), the ADC's quantisation
    to ``step`` (0: off) and clipping to ``bound`` (inf: none). Returns ``(passed, out)``: whether
    each vector stayed within the bound (NaN fails), the clipped outputs."""
    _, z, _ = _unpack(_bits(key, out))
    o = out + noise * z
    if step > 0:
        o = torch.round(o / step) * step
    passed = o.abs().amax(dim=-1) <= bound
    return passed, o.clamp(-bound, bound)


@functools.lru_cache(maxsize=None)
def _analog_mvm() -> type:
    """aihwkit's pure-torch ``AnalogMVM`` with the bound management of aihwkit's C++ tiles.

    Iterative bound management retries an MVM at half the input scale when an output clips at the
    ADC bound. ``AnalogMVM`` tests the whole batch and retries all of it; the C++ tile (the reference)
    computes one vector at a time and retries only the vectors that clip. The others keep their
    scale, hence their output noise relative to the signal (half of what a batch-wide retry leaves
    them). This subclass does the retry per vector; everything else is aihwkit's.
    """
    from aihwkit.simulator.parameters.enums import AnalogMVType, BoundManagementType, NoiseManagementType
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
        def _compute_noise_management(cls, input_: Tensor, nm_type: Any, io_pars: Any, axis: int = -1):
            """AnalogMVM._compute_noise_management with ``amax`` for the (abs-)max per vector: the same
            values without the argmax indices that ``max(dim)`` also computes (4x slower)."""
            if nm_type not in (NoiseManagementType.ABS_MAX, NoiseManagementType.MAX):
                return super()._compute_noise_management(input_, nm_type, io_pars, axis)
            m = (input_.abs() if nm_type == NoiseManagementType.ABS_MAX else input_).amax(dim=axis, keepdim=True)
            return m.clamp(max=io_pars.nm_thres) if io_pars.nm_thres > 0.0 else m

        @classmethod
        def _compute_analog_mv(cls, weight: Tensor, input_: Tensor, trans: bool, scale: Tensor | float, scaling: bool,
                               is_test: bool, io_pars: Any, kernels: Any = None, **fwd_pars: Any):
            """aihwkit's one-pass MVM; a plain read (:func:`plain_io`) with the engine's ``kernels``
            runs as the fused DAC, the product and the fused output stage, its output noise drawn
            from a key of the (seeded) global stream. Anything else: aihwkit's own path."""
            if kernels is None or not plain_io(io_pars):
                return super()._compute_analog_mv(weight=weight, input_=input_, trans=trans, scale=scale,
                                                  scaling=scaling, is_test=is_test, io_pars=io_pars, **fwd_pars)
            s = scale if scaling else 1.0
            s = s if isinstance(s, Tensor) else torch.full((), float(s), device=input_.device, dtype=input_.dtype)
            x = kernels(_k_dac, input_, s, _step(float(io_pars.inp_res), float(io_pars.inp_bound)),
                        float(io_pars.inp_bound))
            out = cls._matmul(weight, x, trans=trans)
            key = torch.randint(-2**63, 2**63 - 1, (), device=out.device, dtype=torch.int64)
            bound = float(io_pars.out_bound) if float(io_pars.out_bound) > 0 else float("inf")
            return kernels(_k_adc, out, key, float(io_pars.out_noise),
                           _step(float(io_pars.out_res), float(io_pars.out_bound)), bound)

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
                   reads: Reads | None = None, **fwd_pars: Any) -> Tensor:
            """aihwkit's ``AnalogMVM.matmul`` with per-vector iterative bound management. ``reads``:
            every retry pass (beyond the first pass of each vector) is added to it, with the row
            voltages of its halved input scale (:meth:`Reads.add_own_pass`); no extra host sync (the
            loop knows how many vectors it retries)."""
            if (io_pars.is_perfect or io_pars.mv_type == AnalogMVType.IDEAL
                    or io_pars.bound_management != BoundManagementType.ITERATIVE):
                return super().matmul(weight, _flush_tiny_vectors(input_), io_pars, trans, is_test, **fwd_pars)
            if input_.ndim != 2:  # vectors along the last dimension
                flat = cls.matmul(weight, input_.reshape(-1, input_.shape[-1]), io_pars, trans, is_test, reads=reads,
                                  **fwd_pars)
                return flat.reshape(*input_.shape[:-1], flat.shape[-1])
            n, n_out = input_.shape[0], weight.shape[int(trans)]
            nm = cls._compute_noise_management(input_=input_, nm_type=io_pars.noise_management, io_pars=io_pars)
            nm = (nm.clone() if isinstance(nm, Tensor)
                  else torch.full((n, 1), float(nm), device=input_.device, dtype=input_.dtype))
            # a vector whose abs-max is below the smallest normal float (an error that underflowed)
            # would get an infinite scale 1 / nm and read 0 x inf = NaN: it is read as a zero vector
            tiny = torch.finfo(nm.dtype).tiny if nm.is_floating_point() else 0.0
            if io_pars.inp_noise <= 0.0 and bool((nm < tiny).all()):
                return torch.zeros(n, n_out, device=input_.device, dtype=input_.dtype)
            nm[nm < tiny] = 1.0
            inp_res = io_pars.inp_res
            if inp_res > 0:
                inp_res = (1 / inp_res if inp_res > 1.0 else inp_res) * 2.0 * io_pars.inp_bound
            out: Tensor | None = None
            pending: Tensor | None = None  # rows still to retry; None: the first pass, all rows
            reduction = 1.0  # the input scale is divided by this (doubled per retry), as in the C++
            while pending is None or pending.numel():
                rows = (lambda t: t) if pending is None else (lambda t: t[pending])
                scale = 1.0 / (rows(nm) * reduction)
                x = rows(input_)
                if pending is not None and reads is not None:  # a retry: one more pass of these vectors
                    reads.add_own_pass(normalised_input(x, scale, io_pars), n_out, trans)
                passed, o = cls._compute_analog_mv(weight=weight, input_=x, trans=trans, scale=scale,
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
    leaving the global RNG as it was.

    Only the generators the MVM draws from are saved, seeded and restored: the CPU's default one
    and, on a GPU, that device's. (``torch.manual_seed`` would also queue a seed for every
    uninitialised accelerator backend, formatting a stack trace for each: a third of a millisecond
    per read, and the reads' values are the same.)"""

    def __init__(self, rng: _Rng):
        self.rng = rng
        self.saved: Tensor | None = None
        self.cuda: tuple[int, Tensor] | None = None

    def __enter__(self) -> None:
        dev = self.rng.device
        self.saved = torch.default_generator.get_state()
        seed = self.rng.seed()
        if dev.type == "cuda":
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            self.cuda = (idx, torch.cuda.get_rng_state(idx))
            with torch.cuda.device(idx):
                torch.cuda.manual_seed(seed)
        torch.default_generator.manual_seed(seed)

    def __exit__(self, *exc: Any) -> None:
        torch.default_generator.set_state(self.saved)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda[1], self.cuda[0])
            self.cuda = None
