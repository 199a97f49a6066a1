"""Coincidence moments (analogff.engine.moments)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analogff.devices import load_device

DEVICES = Path(__file__).resolve().parents[1] / "devices"



@pytest.mark.parametrize("name", ["idealized", "reram_sb", "pcm", "capacitor"])
def test_rowwise_moments_equal_the_identity_batch(name):
    """The element-wise row-by-row moments are exactly the GEMM moments of the batch x = I, d = u^T."""
    from analogff.engine import weight_granularity
    from analogff.engine.moments import _coincidence_moments, _rowwise_moments
    from analogff.engine.rng import _Rng

    cfg = load_device(DEVICES / f"{name}.toml").rpu_config()
    gran = weight_granularity(cfg.device)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(12, 30, generator=g) * torch.rand(1, 30, generator=g)  # rows of different scales
    u[:, 3] = 0.0  # a row with nothing to transfer
    for lr in (gran * 0.5, gran * 40):
        fast = _rowwise_moments(u, lr, cfg.update, gran)
        ref = _coincidence_moments(torch.eye(30), u.T.contiguous(), lr, cfg.update, gran, _Rng(0, torch.device("cpu")),
                                   max_second=0)
        for a, b in zip(fast[:4], ref[:4]):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert fast[4] == ref[4] == 1.0
