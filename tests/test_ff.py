"""Forward-Forward (analogff.ff): losses vs autograd, overlay, negatives, prediction, the net's
residency rule, the training step's NaN check. Fast (seconds), synthetic data only."""

from __future__ import annotations

import math

import pytest
import torch

from analogff.ff import (
    FFConfig,
    FFNet,
    elastic_distort,
    ff_loss_and_error,
    goodness,
    hard_wrong_labels,
    hinton_loss,
    overlay_label,
    overlay_neutral,
    random_shift,
    random_wrong_labels,
    symba_loss,
    warp,
)

from ffhelpers import FakeCrossbar, synthetic, tiny_net  # noqa: F401 (FakeCrossbar: used by name in a parametrize)

torch.set_num_threads(1)


# -------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("loss", ["symba", "hinton"])
@pytest.mark.parametrize("kind", ["sum", "mean"])
def test_local_error_matches_autograd(loss, kind):
    cfg = FFConfig(loss=loss, goodness=kind, alpha=1.3, theta=1.7)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * 6, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    h = torch.relu(z)
    gp, gn = goodness(h[:6], kind), goodness(h[6:], kind)
    ref = symba_loss(gp, gn, cfg.alpha) if loss == "symba" else hinton_loss(gp, gn, cfg.theta)
    ref.backward()
    got_loss, d = ff_loss_and_error(h[:6].detach(), h[6:].detach(), cfg)
    assert torch.allclose(got_loss, ref.detach())
    assert torch.allclose(d, z.grad, atol=1e-12)


def test_loss_formulas():
    gp, gn = torch.tensor([3.0]), torch.tensor([1.0])
    assert math.isclose(float(symba_loss(gp, gn, 4.0)), math.log1p(math.exp(-8.0)), rel_tol=1e-6)
    expected = math.log1p(math.exp(-(3.0 - 2.0))) + math.log1p(math.exp(1.0 - 2.0))
    assert math.isclose(float(hinton_loss(gp, gn, 2.0)), expected, rel_tol=1e-6)


# ------------------------------------------------------------------------- overlay, negatives
def test_label_overlay():
    x = torch.rand(5, 784)
    y = torch.tensor([0, 3, 9, 3, 1])
    out = overlay_label(x, y, value=1.0)
    assert torch.equal(out[:, 10:], x[:, 10:])
    assert torch.equal(out[:, :10], torch.nn.functional.one_hot(y, 10).float())
    assert not torch.equal(out, x)  # x itself is untouched: a copy
    neutral = overlay_neutral(x, value=0.1)
    assert torch.allclose(neutral[:, :10], torch.full((5, 10), 0.1))
    assert torch.equal(neutral[:, 10:], x[:, 10:])


def test_random_negatives_never_true_and_cover_all_wrong_labels():
    y = torch.arange(10).repeat(50)
    for seed in range(50):
        neg = random_wrong_labels(y, torch.Generator().manual_seed(seed))
        assert (neg != y).all() and neg.min() >= 0 and neg.max() <= 9
    seen = {(int(a), int(b)) for a, b in zip(y, neg)}
    assert len(seen) > 60  # many (true, wrong) pairs reached


def test_hard_negatives_never_true_label():
    y = torch.arange(10).repeat(20)
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        probs = torch.softmax(torch.randn(len(y), 10, generator=g) * 3, 1)
        assert (hard_wrong_labels(probs, y, g) != y).all()
    certain = torch.nn.functional.one_hot(y, 10).float()  # all mass on the true label
    assert (hard_wrong_labels(certain, y, torch.Generator().manual_seed(0)) != y).all()


def test_hard_negatives_follow_probabilities():
    y = torch.zeros(4000, dtype=torch.long)
    probs = torch.full((4000, 10), 0.01)
    probs[:, 7] = 0.9  # the net thinks "7": hard negatives should mostly be 7
    neg = hard_wrong_labels(probs, y, torch.Generator().manual_seed(1))
    assert (neg == 7).float().mean() > 0.85


def test_random_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 784)
    x[:, 14 * 28 + 14] = 1.0  # one pixel in the centre survives any small shift
    out = random_shift(x, 2, g)
    assert out.shape == x.shape and torch.equal(out.sum(1), x.sum(1))
    assert torch.equal(random_shift(x, 0, g), x)


def test_random_shift_moves_every_channel_of_an_image_together():
    """CIFAR-10's channel-major 3 x 32 x 32 images: the three channels get the same shift; a size
    that is not whole channels is a one-line error naming FFConfig.image_side."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(4, 3 * 32 * 32)
    for c in range(3):
        x[:, c * 1024 + 16 * 32 + 16] = c + 1.0  # the centre pixel of each channel, tagged by channel
    out = random_shift(x, 3, g, side=32).view(4, 3, 32, 32)
    for i in range(4):
        where = [torch.nonzero(out[i, c]).tolist() for c in range(3)]
        assert where[0] == where[1] == where[2] and len(where[0]) == 1
        assert [float(out[i, c].sum()) for c in range(3)] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="image_side"):
        random_shift(torch.zeros(2, 1000), 2, g, side=28)


def test_warp_by_whole_pixels_is_a_shift_with_zero_fill():
    """A constant displacement of whole pixels moves the image exactly (bilinear weights 0 / 1)."""
    img = torch.rand(2, 1, 28, 28)
    field = torch.zeros(2, 2, 28, 28)
    field[0, 0] = 2.0  # image 0: reads 2 pixels to the right
    field[1, 1] = -1.0  # image 1: reads 1 pixel up
    out = warp(img, field)
    want0 = torch.zeros(28, 28)
    want0[:, :26] = img[0, 0, :, 2:]
    want1 = torch.zeros(28, 28)
    want1[1:, :] = img[1, 0, :27, :]
    assert torch.allclose(out[0, 0], want0, atol=1e-6) and torch.allclose(out[1, 0], want1, atol=1e-6)


def test_elastic_distort_field_size_and_seed():
    """alpha 0 is the identity (no draws); otherwise the displacement follows alpha (a ramp image
    reads its own x coordinate, so the output minus the input is the field's x part), the same
    generator state gives the same images, and a wrong image size names FFConfig.image_side."""
    ramp = torch.arange(28.0).repeat(28, 1).reshape(1, 784).repeat(64, 1)  # pixel value = its column
    g = torch.Generator().manual_seed(0)
    assert torch.equal(elastic_distort(ramp, 0.0, 4.0, g), ramp)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    inner = (slice(None), slice(4, 24), slice(4, 24))  # away from the zero fill at the border
    dx = {}
    for alpha in (10.0, 20.0):
        out = elastic_distort(ramp, alpha, 4.0, torch.Generator().manual_seed(1))
        dx[alpha] = (out - ramp).view(64, 28, 28)[inner]
    # uniform(-1, 1) smoothed by a 2-D Gaussian of std 4: std 0.577 / (2 sqrt(pi) 4) = 0.041 per alpha
    assert 0.025 * 10 < float(dx[10.0].std()) < 0.06 * 10
    assert torch.allclose(dx[20.0], 2 * dx[10.0], atol=1e-3)  # same field, twice the size
    a = elastic_distort(ramp, 10.0, 4.0, torch.Generator().manual_seed(2))
    assert torch.equal(a, elastic_distort(ramp, 10.0, 4.0, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="image_side"):
        elastic_distort(torch.zeros(2, 1000), 10.0, 4.0, g)


@pytest.mark.parametrize("field,value", [("elastic", -1.0), ("elastic", float("nan")), ("elastic_sigma", 0.0)])
def test_elastic_options_refuse_bad_values(field, value):
    with pytest.raises(ValueError, match=f"FFConfig.{field}="):
        FFConfig(**{field: value})


# ---------------------------------------------------------------------------------- prediction
def test_goodness_prediction_picks_highest_goodness_label():
    # One layer, unit j = label pixel j + pixel 10+j: goodness(label c) = const + 2 x[10+c] + 1,
    # so the predicted label is the one whose "evidence pixel" 10+c is brightest.
    net = FFNet([784, 10], config=FFConfig(goodness="sum", head=False, negatives="random"))
    w = torch.zeros(10, 784)
    w[torch.arange(10), torch.arange(10)] = 1.0
    w[torch.arange(10), 10 + torch.arange(10)] = 1.0
    net.layers[0].linear.weight.data.copy_(w)
    net.layers[0].linear.bias.data.zero_()
    x = torch.zeros(4, 784)
    evidence = torch.tensor([3, 0, 9, 5])
    x[torch.arange(4), 10 + evidence] = torch.tensor([0.5, 0.7, 0.2, 0.9])
    scores = net.goodness_per_label(x)
    assert torch.equal(net.predict(x, "goodness"), evidence)
    assert torch.equal(scores.argmax(1), evidence)
    for c in range(10):  # scores are the goodness with label c overlaid
        h = torch.relu(net.layers[0](overlay_label(x, torch.full((4,), c))))
        assert torch.allclose(scores[:, c], (h * h).sum(1))


def test_goodness_prediction_sums_every_layer_by_default_or_from_goodness_from():
    net = tiny_net()
    x = torch.rand(5, 784)
    hs = net.activities(overlay_label(x, torch.full((5,), 2)))
    both = goodness(hs[0], net.config.goodness) + goodness(hs[1], net.config.goodness)
    assert torch.allclose(net.goodness_per_label(x)[:, 2], both, rtol=1e-5)
    net.config.goodness_from = 1  # Hinton's choice: skip the first layer
    assert torch.allclose(net.goodness_per_label(x)[:, 2], goodness(hs[1], net.config.goodness), rtol=1e-5)


def test_head_and_layer_inputs_are_normalised():
    net = tiny_net()
    hs = net.activities(overlay_neutral(torch.rand(4, 784)))
    hin = net.head_input(hs)
    assert hin.shape == (4, 32)  # only layer 1 (not the first) feeds the head
    assert torch.allclose(hin.pow(2).mean(1), torch.ones(4), atol=1e-4)


def test_config_validation():
    with pytest.raises(ValueError, match="loss"):
        FFConfig(loss="nope")
    with pytest.raises(ValueError, match="hard negatives"):
        FFConfig(head=False, negatives="hard", hard_source="head")


def test_digital_state_goes_to_dram_like_the_bp_reference_when_it_does_not_fit():
    from analogff.ff import FFConfig, FFNet

    small = FFNet([20, 16, 16], layer="digital", config=FFConfig())
    big = FFNet([784, 500, 500], layer="digital", config=FFConfig())  # 642k params x (w, g, m, v) > 1 MiB
    for net, n_in in ((small, 20), (big, 784)):
        x = torch.rand(4, n_in)
        net.layers[0](x)
        net.layers[0].apply_update(x, torch.rand(4, net.layers[0].linear.out_features), 1e-3)
    assert small.counters.dram_bytes == 0 and small.counters.sram_bytes > 0
    assert big.counters.dram_bytes > 0


@pytest.mark.parametrize("update", ["adam", "momentum", "sgd"])
def test_analog_periphery_state_goes_to_dram_by_the_same_rule(update):
    """The periphery's m (and v) follow the digital layers' memory rule: > 1 MiB lives in DRAM."""
    from analogff.ff import FFConfig, FFNet

    cfg = FFConfig(analog_update=update)
    small = FFNet([20, 16, 16], layer="analog", config=cfg, crossbar_factory=FakeCrossbar)
    big = FFNet([784, 500, 500], layer="analog", config=cfg, crossbar_factory=FakeCrossbar)  # m, v: 5 MB
    for net, n_in in ((small, 20), (big, 784)):
        x = torch.rand(4, n_in)
        net.layers[0].apply_update(x, torch.rand(4, net.layers[0].n_out), 1e-3)
    assert small.counters.dram_bytes == 0
    if update == "sgd":  # no state: nothing to store
        assert big.counters.dram_bytes == 0 and big.periphery_state_bytes < 1 << 20
    else:
        per_weight = {"adam": 4, "momentum": 2}[update] * 4  # state read and written, fp32
        assert big.counters.dram_bytes == per_weight * 500 * 785


# ------------------------------------------------------------- design-space options (issue #17 part 2)
def _reference_goodness(h, kind, p):
    if kind == "sum":
        return (h ** 2).sum(1)
    if kind == "mean":
        return (h ** 2).mean(1)
    if kind == "abs":
        return h.sum(1)
    return (h ** p).sum(1) ** (1.0 / p)


@pytest.mark.parametrize("loss", ["symba", "hinton"])
@pytest.mark.parametrize("kind,p", [("sum", 2.0), ("mean", 2.0), ("abs", 2.0), ("pnorm", 3.0), ("pnorm", 1.5)])
@pytest.mark.parametrize("sign", ["max", "min"])
@pytest.mark.parametrize("fn", ["logsigmoid", "sigmoid"])
def test_every_goodness_sign_and_loss_fn_matches_autograd(loss, kind, p, sign, fn):
    cfg = FFConfig(loss=loss, goodness=kind, goodness_p=p, goodness_sign=sign, loss_fn=fn, alpha=1.3, theta=1.7)
    z = torch.randn(2 * 6, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    h = torch.relu(z)
    sg = 1.0 if sign == "max" else -1.0
    s_pos, s_neg = sg * _reference_goodness(h[:6], kind, p), sg * _reference_goodness(h[6:], kind, p)
    f = (lambda m: -torch.nn.functional.logsigmoid(m)) if fn == "logsigmoid" else (lambda m: 1 - torch.sigmoid(m))
    if loss == "hinton":  # positive data above the threshold (min: below it), negative data on the other side
        ref = (f(s_pos - sg * cfg.theta) + f(sg * cfg.theta - s_neg)).mean()
    else:
        ref = f(cfg.alpha * (s_pos - s_neg)).mean()
    ref.backward()
    got, d = ff_loss_and_error(h[:6].detach(), h[6:].detach(), cfg)
    assert torch.allclose(got, ref.detach())
    assert torch.allclose(d, z.grad, atol=1e-12)


def test_goodness_kinds_compute_their_formulas():
    h = torch.tensor([[0.0, 3.0, 4.0], [1.0, 0.0, 0.0]])
    assert torch.equal(goodness(h, "sum"), torch.tensor([25.0, 1.0]))
    assert torch.equal(goodness(h, "abs"), torch.tensor([7.0, 1.0]))
    assert torch.allclose(goodness(h, "pnorm", 2.0), torch.tensor([5.0, 1.0]))
    assert torch.allclose(goodness(h, "pnorm", 1.0), goodness(h, "abs"))
    assert torch.allclose(goodness(h, "pnorm", 3.0), torch.tensor([(27.0 + 64.0) ** (1 / 3), 1.0]))


def test_min_goodness_prediction_picks_the_lowest_goodness_label():
    net = FFNet([784, 10], config=FFConfig(goodness="sum", head=False, negatives="random", goodness_sign="min"))
    w = torch.zeros(10, 784)
    w[torch.arange(10), torch.arange(10)] = 1.0
    w[torch.arange(10), 10 + torch.arange(10)] = -1.0  # evidence pixel 10+c lowers label c's goodness
    net.layers[0].linear.weight.data.copy_(w)
    net.layers[0].linear.bias.data.zero_()
    x = torch.zeros(4, 784)
    evidence = torch.tensor([3, 0, 9, 5])
    x[torch.arange(4), 10 + evidence] = torch.tensor([0.5, 0.7, 0.2, 0.9])
    assert torch.equal(net.predict(x, "goodness"), evidence)
    g = torch.stack([goodness(torch.relu(net.layers[0](overlay_label(x, torch.full((4,), c)))), "sum")
                     for c in range(10)], 1)
    assert torch.allclose(net.goodness_per_label(x), -g)


def test_peer_norm_error_matches_autograd_and_pulls_units_to_their_peers():
    from analogff.ff import peer_norm_loss_and_error

    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(True)
    h = torch.relu(z)
    running = torch.tensor([0.5, 0.1, 0.9, 0.5, 0.5], dtype=torch.float64)
    r = 0.9 * running + 0.1 * h.mean(0)
    ref = 0.03 * ((r.mean() - r) ** 2).mean()
    ref.backward()
    loss, d, r_new = peer_norm_loss_and_error(h.detach(), running, 0.03)
    assert torch.allclose(loss, ref.detach()) and torch.allclose(d, z.grad, atol=1e-15)
    assert torch.allclose(r_new, r.detach())
    # in a net: the running means move, a unit more active than its peers gets a positive error (pushed down)
    net = tiny_net(peer_norm=0.03)
    assert "peer_mean0" in net.state_dict() and "peer_mean0" not in tiny_net().state_dict()
    before = net.peer_mean0.clone()
    x, y = synthetic(50)
    net.train_step(x, y, torch.Generator().manual_seed(0))
    assert not torch.equal(before, net.peer_mean0)


@pytest.mark.parametrize("opts", [{"goodness": "abs"}, {"goodness": "pnorm", "goodness_p": 3.0},
                                  {"goodness_sign": "min"}, {"loss_fn": "sigmoid", "alpha": 2.0},
                                  {"peer_norm": 0.03}, {"dropout": 0.2}, {"collaborative": True}])
def test_each_option_learns_the_synthetic_task(opts):
    from analogff.train import train_ff

    from ffhelpers import tiny_data

    net = tiny_net(goodness_from=0, **opts)  # the goodness of both layers (the tiny net's second learns slowly)
    x, y = tiny_data()["test"]
    assert net.accuracy(x, y, "goodness") < 0.3
    train_ff(net, tiny_data(), epochs=2, batch_size=50, seed=0, progress=False)
    assert net.accuracy(x, y, "goodness") > 0.85


def test_design_space_options_are_checked():
    for field, bad in [("goodness", "cube"), ("goodness_sign", "up"), ("loss_fn", "tanh"), ("goodness_p", 0.0),
                       ("goodness_p", float("nan")), ("peer_norm", -0.1), ("peer_norm", float("inf")),
                       ("dropout", 1.0), ("dropout", -0.1), ("dropout", True), ("analog_reads", 0),
                       ("analog_reads", 1.5)]:
        with pytest.raises(ValueError, match=field):
            FFConfig(**{field: bad})


def test_dropout_zeroes_the_upper_layers_inputs_in_training_only_and_is_counted():
    """The second layer's training input: a fraction p of the normalised activities zeroed, the rest
    scaled by 1 / (1 - p); the first layer (the image and label) untouched; evaluation unchanged;
    the periphery's compare and multiply counted."""
    seen: list[tuple[int, torch.Tensor]] = []
    x, y = synthetic(64)
    nets = {}
    for p in (0.0, 0.5):
        net = tiny_net(dropout=p)
        for i, layer in enumerate(net.layers):
            real = layer.apply_update
            layer.apply_update = (lambda real, i: lambda inp, d, lr: (seen.append((i, inp.clone())), real(inp, d, lr)))(real, i)
        before = net.counters.digital_mults
        net.train_step(x, y, torch.Generator().manual_seed(0))
        nets[p] = (net, net.counters.digital_mults - before)
    (_, plain0), (_, plain1), (_, drop0), (_, drop1) = seen
    assert torch.equal(plain0, drop0)  # the first layer's input: image and labels, never dropped
    dropped = (drop1[plain1 != 0] == 0).float().mean()  # of the values that were not zero anyway
    assert 0.4 < float(dropped) < 0.6  # about half dropped
    kept = drop1 != 0
    assert torch.allclose(drop1[kept], 2.0 * plain1[kept], rtol=1e-4, atol=1e-5)  # same net so far: scaled by 2
    assert nets[0.5][1] - nets[0.0][1] == 2 * 64 * 32  # one multiply per value of the dropped input
    a, b = tiny_net(dropout=0.5), tiny_net()
    assert torch.equal(a.goodness_per_label(x), b.goodness_per_label(x))  # evaluation: no dropout


@pytest.mark.parametrize("opts", [{}, {"loss": "hinton", "goodness": "mean"}, {"goodness": "pnorm", "goodness_p": 3.0},
                                  {"goodness_sign": "min", "loss_fn": "sigmoid"}])
def test_collaborative_errors_are_autograds_of_the_total_goodness_with_the_other_layers_fixed(opts):
    """Layer collaboration: layer i's error is dL/dz_i of the loss of the goodness summed over all
    layers, the other layers' goodness held constant (autograd through detached copies)."""
    cfg = FFConfig(alpha=0.7, theta=2.0, **opts)
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(2 * 5, n, generator=g, dtype=torch.float64) for n in (7, 4, 6)]
    for i in range(3):
        z = zs[i].clone().requires_grad_(True)
        hs = [torch.relu(z) if j == i else torch.relu(zs[j]) for j in range(3)]
        gs = [goodness(h, cfg.goodness, cfg.goodness_p) for h in hs]
        tot = sum(gs)
        sgn = 1.0 if cfg.goodness_sign == "max" else -1.0
        sp, sn = sgn * tot[:5], sgn * tot[5:]
        f = (lambda m: torch.nn.functional.softplus(-m)) if cfg.loss_fn == "logsigmoid" else (lambda m: 1 - torch.sigmoid(m))
        if cfg.loss == "hinton":
            ref = (f(sp - sgn * cfg.theta) + f(sgn * cfg.theta - sn)).mean()
        else:
            ref = f(cfg.alpha * (sp - sn)).mean()
        ref.backward()
        rest = (tot - gs[i]).detach()
        loss, d = ff_loss_and_error(hs[i][:5].detach(), hs[i][5:].detach(), cfg, others=(rest[:5], rest[5:]))
        assert torch.allclose(loss, ref.detach()) and torch.allclose(d, z.grad, atol=1e-12)


def test_collaborative_step_updates_every_layer_from_its_pre_update_input_and_is_counted():
    """The collaborative step: the whole forward pass before any update (each layer's update sees
    the inputs the pass gave it), one shared scalar per sample, the sums counted; with a single
    layer it is the plain FF step."""
    x, y = synthetic(64)
    for n_layers in (1, 2):
        dims = [784] + [32] * n_layers
        nets = [FFNet(dims, config=FFConfig(lr=1e-2, head=False, negatives="random", collaborative=c))
                for c in (False, True)]
        seen = {}
        for net in nets:
            first = net.layers[0]
            real = first.apply_update
            first.apply_update = (lambda real, net: lambda inp, d, lr: (seen.setdefault(id(net), d.clone()),
                                                                        real(inp, d, lr)))(real, net)
            net.train_step(x, y, torch.Generator().manual_seed(0))
        plain, collab = (seen[id(n)] for n in nets)
        extra = nets[1].counters.digital_ops - nets[0].counters.digital_ops
        if n_layers == 1:
            assert torch.equal(plain, collab) and extra == 0
        else:  # the second layer's goodness changes the first layer's error; the sums are counted
            assert not torch.allclose(plain, collab)
            assert extra == (1 + 2) * 2 * 64
    with pytest.raises(ValueError, match="collaborative"):
        FFConfig(collaborative=True, pairwise=True)
