"""Alternated pairwise learning (analogff.pairwise): the Trifecta's schedule and the closed-form
derivatives of the normalisations, against autograd."""

from __future__ import annotations

import pytest
import torch

from analogff.pairwise import batch_norm_backward, learns_from_own_loss, length_norm_backward


def test_schedule_alternates_like_the_trifecta():
    # step 0: layers 1, 3 learn (each also teaches the layer below); step 1: layers 0, 2
    assert [i for i in range(4) if learns_from_own_loss(i, 0)] == [1, 3]
    assert [i for i in range(4) if learns_from_own_loss(i, 1)] == [0, 2]
    assert all(learns_from_own_loss(i, t) != learns_from_own_loss(i, t + 1) for i in range(5) for t in range(4))


@pytest.mark.parametrize("kind", ["length", "batch"])
def test_norm_backward_matches_autograd(kind):
    g = torch.Generator().manual_seed(0)
    h = torch.relu(torch.randn(6, 7, generator=g, dtype=torch.float64))
    h[2] = 0.0  # an all-zero row (a dead sample) must not give NaN
    up = torch.randn(6, 7, generator=g, dtype=torch.float64)
    x = h.clone().requires_grad_(True)
    if kind == "length":
        y = x / (x.pow(2).mean(1, keepdim=True).sqrt() + 1e-8)
        ours = length_norm_backward(h, up, 1e-8)
    else:
        y = (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt()
        ours = batch_norm_backward(h, up)
    (y * up).sum().backward()
    rows = [0, 1, 3, 4, 5] if kind == "length" else list(range(6))  # autograd's sqrt'(0) is inf at a zero row
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours[rows], x.grad[rows], rtol=1e-9, atol=1e-12)
