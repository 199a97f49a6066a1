"""The device-model protocol: what :class:`analogff.engine.device_array.DeviceArray` asks of a model.

A model is one aihwkit device class (``ConstantStepDevice``, ``ExpStepDevice``, ...). The array
does what aihwkit's ``PulsedRPUDevice`` does for every model (device-to-device bounds and step
sizes, write noise, reset, decay, diffusion) and hands the rest to its model:

* :meth:`DeviceModel.configure` (the model's options, refusals of what is not simulated),
* :meth:`DeviceModel.populate` (the model's own hidden parameters, drawn after the common ones in
  aihwkit's order),
* :meth:`DeviceModel.derive` (per-device constants of its closed forms, set on the array),
* :meth:`DeviceModel.apply` (a batch of pulses through its fused kernel).

A new model: one module with a subclass, one line in the registry of :mod:`analogff.engine.models`.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from ..moments import SignedMoments, split_by_sign


class DeviceModel:
    """Base of the device models; ``name`` is the aihwkit class name it simulates."""

    def __init__(self, name: str):
        self.name = name

    def check_write_noise(self, write_noise_std: float, where: str) -> None:
        """Refuse a write noise the aihwkit model does not have (default: every model has one)."""

    def configure(self, arr: Any, cfg: Any, where: str) -> None:
        """Model options on the array (``arr.mult``, ``arr.complex_noise``, ``arr.noise_add_slope``)."""

    def populate(self, arr: Any, p: dict[str, Tensor], g: Callable[[], Tensor]) -> None:
        """Add the model's own hidden parameters to ``p`` (``g()`` draws a standard normal per device)."""

    def derive(self, arr: Any) -> None:
        """Set the per-device constants of the model's closed forms on the array, from ``arr.p``."""
        raise NotImplementedError

    def apply(self, arr: Any, hidden: Tensor, app: Tensor, at: Callable[[Tensor], Tensor], shape: tuple[int, ...],
              mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, m2_scale: float, rng: Any, decay: bool,
              one_sign: bool) -> tuple[Tensor, Tensor, Tensor, bool]:
        """One batch of pulses (coincidence moments ``mu``, ``m2``) on ``hidden`` / ``app`` (the
        apparent weights), both already restricted by ``at`` to the pulsed devices (``shape``).
        ``decay``: also apply the once-per-batch decay if the kernel can. Returns ``(hidden, apparent,
        pulses, decay still to do)``, ``pulses`` per device (the array sums them: a sum inside a
        compiled kernel becomes a second loop)."""
        raise NotImplementedError

    def apply_signed(self, arr: Any, moments: SignedMoments, rng: Any, decay: bool) -> tuple[Tensor, Tensor, Tensor, bool]:
        """:meth:`apply` on the whole array with moments of one sign per device
        (:class:`analogff.engine.moments.SignedMoments`). Here: split into the four arrays first; a
        model whose kernel splits them itself overrides this."""
        mu_u, mu_d, m2_u, m2_d = split_by_sign(moments.mu, moments.m2)
        return self.apply(arr, arr.hidden, arr.w, lambda t: t, arr.shape, mu_u, mu_d, m2_u, m2_d, moments.m2_scale, rng,
                          decay, True)

    def pairs_with(self, arr: Any, other: Any) -> bool:
        """Whether ``arr`` (plus) and ``other`` (minus) can take a one-sided transfer in one kernel."""
        return False

    def pulse_pair(self, plus: Any, minus: Any, mu_u: Tensor, mu_d: Tensor, m2_u: Tensor, m2_d: Tensor, rng: Any,
                   m2_scale: float) -> float:
        raise NotImplementedError(f"{self.name} has no pair kernel")
