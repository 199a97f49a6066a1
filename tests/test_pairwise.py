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
    dtype = torch.float64 if kind == "batch" else torch.float32  # float32: an all-zero row must not underflow to NaN
    h = torch.relu(torch.randn(6, 7, generator=g, dtype=torch.float64)).to(dtype)
    h[2] = 0.0  # an all-zero row (a dead sample) must not give NaN
    up = torch.randn(6, 7, generator=g, dtype=torch.float64).to(dtype)
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
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours[rows], x.grad[rows], **tol)


def _tiny(pairwise=True, **kw):
    from analogff.ff import FFConfig, FFNet

    cfg = FFConfig(pairwise=pairwise, negatives="random", head=False, optimizer="sgd", momentum=0.0, lr=0.05,
                   cooldown=0.0, seed=3, **kw)
    return FFNet([20, 6, 5, 4], config=cfg)


def _data(b=8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 20, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.parametrize("norm", ["length", "batch"])
def test_step_zero_trains_layer_0_by_the_loss_of_layer_1_as_autograd_does(norm):
    """Step 0: layer 1 learns from its own loss and teaches layer 0 through W1, the normalisation
    and the ReLU (the gradient of layer 1's loss with respect to W0, by autograd); layer 2 learns
    nothing (its turn is step 1, and no layer above teaches it)."""
    from analogff.ff import ff_loss_and_error, overlay_label, random_wrong_labels

    net = _tiny(norm=norm)
    x, y = _data()
    w = [lay.linear.weight.detach().clone() for lay in net.layers]
    bias = [lay.linear.bias.detach().clone() for lay in net.layers]
    y_neg = random_wrong_labels(y, torch.Generator().manual_seed(0), 10)
    inp = torch.cat([overlay_label(x, y, 10), overlay_label(x, y_neg, 10)]).double()
    W0, b0 = w[0].double().requires_grad_(True), bias[0].double().requires_grad_(True)
    h0 = torch.relu(inp @ W0.t() + b0)
    if norm == "length":
        y0 = h0 / (h0.pow(2).mean(1, keepdim=True).sqrt() + net.config.eps)
    else:
        y0 = (h0 - h0.mean(0)) / (h0.var(0, unbiased=False) + 1e-5).sqrt()
    h1 = torch.relu(y0 @ w[1].double().t() + bias[1].double())
    loss, _ = ff_loss_and_error(h1[:8], h1[8:], net.config)
    loss.backward()
    net.train_step(x, y, torch.Generator().manual_seed(0))
    lr = net.config.lr
    assert torch.allclose((w[0] - net.layers[0].linear.weight.detach()).double() / lr, W0.grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose((bias[0] - net.layers[0].linear.bias.detach()).double() / lr, b0.grad, rtol=1e-4, atol=1e-7)
    assert not torch.equal(w[1], net.layers[1].linear.weight)
    assert torch.equal(w[2], net.layers[2].linear.weight)
    assert int(net.pair_step) == 1
    net.train_step(x, y, torch.Generator().manual_seed(0))  # step 1: layers 0 and 2 learn, 2 teaches 1
    assert not torch.equal(w[2], net.layers[2].linear.weight)


def test_off_by_default_and_on_arrays_the_error_is_a_counted_transposed_mvm():
    from pathlib import Path

    from analogff.ff import FFConfig, FFNet

    x, y = _data()
    plain = _tiny(pairwise=False)
    plain.train_step(x, y, torch.Generator().manual_seed(0))
    assert "pair_step" not in plain.state_dict() and plain.total_counts().backward_mvms == 0
    ecram = Path(__file__).resolve().parents[1] / "devices" / "ecram.toml"
    net = FFNet([20, 6, 5, 4], layer="analog", device=ecram,
                config=FFConfig(pairwise=True, negatives="random", head=False, analog_update="sgd", lr=0.1))
    net.train_step(x, y, torch.Generator().manual_seed(0))
    c = net.total_counts()
    # step 0: layer 1 teaches layer 0 (one transposed MVM per row of the 2 x 8 positive and negative
    # rows, through layer 1's 6 + 1 (bias) rows); layer 2 has no layer above
    assert (c.backward_mvms, c.backward_dac_conversions, c.backward_adc_conversions) == (16, 16 * 5, 16 * 7)
    with pytest.raises(ValueError, match="pairwise"):
        from analogff.accounting import ff_step_counts

        ff_step_counts([20, 6, 5, 4], 8, net.config)
