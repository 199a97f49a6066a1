"""aihwkit's ConstantStepDevice: ``w += n_up dw_up - n_down dw_down``, noise ``dw_min_std * step``
per pulse (the affine kernel with zero slopes)."""

from __future__ import annotations

from typing import Any

import torch

from ..refuse import _refuse
from .affine import AffineModel


class ConstantStep(AffineModel):
    constant = True

    def check_write_noise(self, write_noise_std: float, where: str) -> None:
        if write_noise_std > 0:
            raise _refuse(where, "ConstantStepDevice has no write noise in aihwkit")

    def configure(self, arr: Any, cfg: Any, where: str) -> None:
        arr.mult = True

    def derive(self, arr: Any) -> None:
        su, sd = arr.p["dwmin_up"], arr.p["dwmin_down"]
        zero = torch.zeros(arr.shape, device=arr.device)
        arr.au = arr.ad = arr.lu = arr.ld = zero
        arr.bu, arr.bd = arr.cu, arr.cd = su, sd
