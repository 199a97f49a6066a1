"""aihwkit's LinearStepDevice, and SoftBoundsDevice (in C++ a LinearStep with gamma 1, no
device-to-device slopes, bounds as references): the step is ``dw_up + slope_up w`` up and
``dw_down + slope_down w`` down, slopes ``-gamma dw / bound``; ``mult_noise``: the noise scales with
the actual step (at the middle of the move) or with ``dw_min`` only."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..refuse import _refuse
from .affine import AffineModel


class LinearStep(AffineModel):
    """``name`` ``"LinearStepDevice"`` or ``"SoftBoundsDevice"``."""

    def configure(self, arr: Any, cfg: Any, where: str) -> None:
        c = cfg
        if self.name == "SoftBoundsDevice":
            arr.mult = bool(getattr(c, "mult_noise", True))
        else:
            arr.mult = bool(c.mult_noise)
        if (getattr(c, "reverse_up", False) or getattr(c, "reverse_down", False)) and not arr.mult:
            raise _refuse(where, "reverse_up/down needs mult_noise (aihwkit refuses it too)")

    def populate(self, arr: Any, p: dict[str, Tensor], g: Callable[[], Tensor]) -> None:
        c, shape = arr.cfg, arr.shape
        w_max, w_min = float(c.w_max), float(c.w_min)
        max_bound, min_bound = p["max_bound"], p["min_bound"]
        scale_up, scale_down = p["dwmin_up"], p["dwmin_down"]
        if self.name == "SoftBoundsDevice":  # C++ SoftBounds = LinearStep with these settings
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
            ref_up = torch.full(shape, (w_min - off) if rev_up else w_max, device=arr.device)
            ref_down = torch.full(shape, (w_max + off) if rev_down else w_min, device=arr.device)
        else:
            ref_up = (min_bound - off) if rev_up else max_bound
            ref_down = (max_bound + off) if rev_down else min_bound
        p["slope_up"] = torch.where(ref_up != 0, -diff_up * scale_up / torch.where(ref_up != 0, ref_up, 1.0), 0.0)
        p["slope_down"] = torch.where(ref_down != 0,
                                      -diff_down * scale_down / torch.where(ref_down != 0, ref_down, 1.0), 0.0)

    def slopes(self, arr: Any) -> tuple[Tensor, Tensor]:
        return arr.p["slope_up"], arr.p["slope_down"]
