"""aihwkit's SoftBoundsReferenceDevice: soft bounds on ``w + reference`` (slopes from the bounds,
with device-to-device slope variations; ``subtract_symmetry_point`` shifts the reference)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .affine import AffineModel


class SoftBoundsReference(AffineModel):
    def populate(self, arr: Any, p: dict[str, Tensor], g: Callable[[], Tensor]) -> None:
        c = arr.cfg
        max_bound, min_bound = p["max_bound"], p["min_bound"]
        scale_up, scale_down = p["dwmin_up"], p["dwmin_down"]
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

    def slopes(self, arr: Any) -> tuple[Tensor, Tensor]:
        su, sd = arr.p["dwmin_up"], arr.p["dwmin_down"]
        au = torch.where(arr.bmax > 0, -su / torch.where(arr.bmax > 0, arr.bmax, 1.0), 0.0)
        ad = torch.where(arr.bmin < 0, -sd / torch.where(arr.bmin < 0, arr.bmin, -1.0), 0.0)
        return au, ad
