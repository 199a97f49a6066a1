"""The recurrent top-down FF net (analogff.recurrent): the damped synchronous rule by hand, the 3-5
readout, negatives, counts of the analog passes, learning, train_ff with checkpoint/resume.
Fast (seconds), synthetic data only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import analogff.recurrent as rec
from analogff import accounting as cost
from analogff.ff import FFConfig, goodness
from analogff.recurrent import RecurrentFFNet
from analogff.train import train_ff

from ffhelpers import FakeCrossbar, assert_same_state, synthetic, tiny_data

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _set(layer, w, b=None):
    """Fixed weights (and bias) of a DigitalLayer."""
    with torch.no_grad():
        layer.linear.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        if b is not None:
            layer.linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))


def _norm(h):
    return h / (h.pow(2).mean(1, keepdim=True).sqrt() + 1e-8)


def _goodness_at(net, x, t):
    """(B, classes) goodness of iteration t alone (the net's own readout of one iteration)."""
    old = net.readout_iterations, net.predict_iterations
    net.readout_iterations, net.predict_iterations = (t,), t
    try:
        return net.goodness_per_label(x)
    finally:
        net.readout_iterations, net.predict_iterations = old


# -------------------------------------------------------------------------- the dynamics by hand
def test_one_hidden_layer_numbers_by_hand():
    """dims 2-2-2, U = I (no bias), D = [[1, 0], [0, -3]], x = [1, 2]:
    h(0) = relu(x) = [1, 2];
    label 0: z = x + D e0 = [2, 2], h(1) = 0.3 [1, 2] + 0.7 [2, 2] = [1.7, 2.0], G = 6.89;
             h(2) = 0.3 [1.7, 2] + 0.7 [2, 2] = [1.91, 2.0], G = 7.6481;
    label 1: z = x + D e1 = [1, -1], h(1) = 0.3 [1, 2] + 0.7 [1, 0] = [1.0, 0.6], G = 1.36."""
    net = RecurrentFFNet([2, 2, 2], config=FFConfig(num_classes=2))
    _set(net.up[0], [[1, 0], [0, 1]], [0, 0])
    _set(net.down[0], [[1, 0], [0, -3]])
    x = torch.tensor([[1.0, 2.0]])
    g1, g2 = _goodness_at(net, x, 1), _goodness_at(net, x, 2)
    assert torch.allclose(g1, torch.tensor([[6.89, 1.36]]), atol=1e-5)
    assert math.isclose(float(g2[0, 0]), 7.6481, abs_tol=1e-5)


def _reference_goodness(net, x, label, t_max):
    """Goodness per iteration 1..t_max of a 2-hidden-layer net, by the paper's rule written out:
    synchronous (every layer from the states at t-1), damped 0.3 old + 0.7 new, normalised inputs."""
    u0, u1 = (lay.linear for lay in net.up)
    d0, d1 = (lay.linear for lay in net.down)
    top = torch.nn.functional.one_hot(torch.tensor([label] * x.shape[0]), net.config.num_classes).float()
    h1 = torch.relu(u0(x))  # the bottom-up pass, no top-down input
    h2 = torch.relu(u1(_norm(h1)))
    out = []
    for _ in range(t_max):
        z1 = u0(x) + d0(_norm(h2))
        z2 = u1(_norm(h1)) + d1(top)
        h1, h2 = 0.3 * h1 + 0.7 * torch.relu(z1), 0.3 * h2 + 0.7 * torch.relu(z2)
        out.append((h1 ** 2).sum(1) + (h2 ** 2).sum(1))
    return out


def test_synchronous_damped_rule_two_hidden_layers():
    net = RecurrentFFNet([6, 3, 3, 4], config=FFConfig(num_classes=4, seed=3))
    x, _ = synthetic(5, dim=6, seed=2)
    for t in (1, 2, 3):
        got = _goodness_at(net, x, t)
        for c in range(4):
            want = _reference_goodness(net, x, c, t)[-1]
            assert torch.allclose(got[:, c], want, rtol=1e-5, atol=1e-6), (t, c)


def test_prediction_averages_iterations_3_to_5_exactly():
    net = RecurrentFFNet([6, 3, 3, 4], config=FFConfig(num_classes=4, seed=1))
    x, _ = synthetic(7, dim=6, seed=4)
    g = {t: _goodness_at(net, x, t) for t in range(1, 9)}
    mean = lambda ts: sum(g[t] for t in ts) / len(ts)  # noqa: E731
    score = net.goodness_per_label(x)
    assert torch.allclose(score, mean((3, 4, 5)), rtol=1e-6)
    for wrong in ((2, 3, 4, 5), (3, 4, 5, 6), (3, 4), (4, 5, 6)):  # the readout must tell these apart
        assert not torch.allclose(score, mean(wrong), rtol=1e-3), wrong
    assert net.predict_iterations == 5 and net.iterations == 8


def test_bad_arguments_are_one_line_value_errors():
    with pytest.raises(ValueError, match="label layer"):
        RecurrentFFNet([784, 8, 7])
    with pytest.raises(ValueError, match="norm"):
        RecurrentFFNet([784, 8, 10], config=FFConfig(norm="batch"))
    with pytest.raises(ValueError, match="readout_iterations"):
        RecurrentFFNet([784, 8, 10], readout_iterations=(3, 9))
    with pytest.raises(ValueError, match="train_iterations"):
        RecurrentFFNet([784, 8, 10], train_iterations=())
    with pytest.raises(ValueError, match="at least one hidden"):
        RecurrentFFNet([784, 10])
    with pytest.raises(ValueError, match="peer_norm"):
        RecurrentFFNet([784, 8, 10], config=FFConfig(peer_norm=0.03))
    with pytest.raises(ValueError, match="softmax"):
        RecurrentFFNet([20, 8, 10]).predict(torch.zeros(2, 20), "softmax")


# ----------------------------------------------------------------------------------- negatives
@pytest.mark.parametrize("negatives,source", [("hard", "head"), ("hard", "goodness"), ("random", "head")])
def test_negatives_are_never_the_true_label(monkeypatch, negatives, source):
    seen = []
    for name in ("hard_wrong_labels", "random_wrong_labels"):
        real = getattr(rec, name)
        monkeypatch.setattr(rec, name, lambda *a, _f=real, **k: seen.append(_f(*a, **k)) or seen[-1])
    net = RecurrentFFNet([784, 16, 16, 10], config=FFConfig(negatives=negatives, hard_source=source))
    x, y = synthetic(64, seed=5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        net.train_step(x, y, gen)
    assert len(seen) == 3
    for y_neg in seen:
        assert y_neg.shape == y.shape and bool((y_neg != y).all())


def test_one_pass_probabilities_are_the_top_layers_goodness_per_label():
    """Hard negatives: softmax(alpha G_c), G_c the top hidden layer's goodness of relu(z_top + D e_c)."""
    cfg = FFConfig(alpha=0.7)
    net = RecurrentFFNet([784, 8, 5, 10], config=cfg)
    x, _ = synthetic(4, seed=6)
    z_top = net.up[1].linear(_norm(torch.relu(net.up[0].linear(x))))
    g = torch.stack([(torch.relu(z_top + net.down[1].linear.weight[:, c]) ** 2).sum(1) for c in range(10)], 1)
    _, _, _, z = net._bottom_up(x)
    assert torch.allclose(net._one_pass_probs(z, None, 1e-3), torch.softmax(0.7 * g, 1), atol=1e-6)


# ---------------------------------------------------------------------- analog: counts by hand
def test_analog_step_counts_forward_mvms_and_no_backward(monkeypatch):
    monkeypatch.setenv("ANALOGFF_COMPILE", "0")
    dims, b, k = [20, 16, 16, 10], 8, 10
    net = RecurrentFFNet(dims, layer="analog", device=ROOT / "devices" / "ecram.toml")
    x, y = synthetic(b, dim=20, seed=7)
    out = net.train_step(x, y, torch.Generator().manual_seed(0), lr=1e-3)
    assert all(math.isfinite(v) for v in out["layer_losses"]) and math.isnan(out["head_loss"])
    u0, u1 = net.up
    d0, d1 = net.down
    # the label-free bottom-up pass reads U_0, U_1 once per image (U_0's image term is then kept);
    # 8 iterations on 2B rows read U_1, D_0, D_1; the hard negatives read D_1's k label columns once
    r = u0.reads  # every read of a layer is this many array reads, averaged (periphery Adam: 2)
    want = {lay: r * n for lay, n in {u0: b, u1: b + 8 * 2 * b, d0: 8 * 2 * b, d1: 8 * 2 * b + k}.items()}
    rows = {u0: 20 + 1, u1: 16 + 1, d0: 16, d1: 10}  # bottom-up layers carry the bias row
    for lay, n in want.items():
        c = lay.xbar.counters
        assert c.mvms == n
        assert c.dac_conversions == n * rows[lay] and c.adc_conversions == n * 16
        assert c.backward_mvms == c.backward_adc_conversions == c.backward_dac_conversions == 0
    total = net.total_counts()
    assert total.mvms == sum(want.values()) and total.backward_adc_conversions == 0
    # prediction: the bottom-up pass once per image, then 10 labels x 5 iterations
    before = {lay: lay.xbar.counters.mvms for lay in want}
    net.accuracy(x, y)
    pred = {lay: r * n for lay, n in {u0: b, u1: b + 5 * k * b, d0: 5 * k * b, d1: 5 * k * b}.items()}
    for lay, n in pred.items():
        assert lay.xbar.counters.mvms - before[lay] == n
    assert net.total_counts().backward_adc_conversions == 0


def test_digital_prediction_macs_by_hand():
    """Every label trial and iteration is a real pass: digital MACs of one prediction batch."""
    n0, n1, n2, k, b = 30, 7, 5, 10, 3
    net = RecurrentFFNet([n0, n1, n2, k], config=FFConfig())
    x, _ = synthetic(b, dim=n0, seed=8)
    net.counters.reset()
    net.goodness_per_label(x)
    r = k * b
    layers = b * n0 * n1 + b * n1 * n2 + 5 * r * (n1 * n2 + n2 * n1 + k * n2)  # U_0 once; U_1 init + 5 x (U_1, D_0, D_1)
    norms = b * n1 + r * n2 + 4 * r * (n1 + n2)  # init: h1; t=1: h2 (h1 reused); t=2..5: both
    good = 3 * r * (n1 + n2)  # iterations 3, 4, 5
    assert net.counters.digital_macs == layers + norms + good
    # multiplies: the normalisations (n + 1 per row), the damping (2 per unit per iteration), the mean
    norm_mults = cost.length_norm(b, n1) + cost.length_norm(r, n2) + cost.length_norm(4 * r, n1) \
        + cost.length_norm(4 * r, n2)
    assert net.counters.digital_mults == norm_mults.digital_mults + 5 * 2 * r * (n1 + n2) + r


def test_fake_crossbar_net_updates_every_layer_once_per_step():
    made = []

    def factory(n_rows, n_cols, seed):
        made.append(FakeCrossbar(n_rows, n_cols, seed))
        return made[-1]

    net = RecurrentFFNet([784, 12, 12, 10], layer="analog", config=FFConfig(analog_update="sgd"),
                         crossbar_factory=factory)
    x, y = synthetic(16, seed=9)
    w0 = [xb.w.clone() for xb in made]
    net.train_step(x, y, torch.Generator().manual_seed(1), lr=0.1)
    assert len(made) == 4 and all(len(xb.calls) == 1 for xb in made)
    # rank of each update: U_0 the images (errors summed over iterations and pos/neg), D_top the
    # 2B label rows (summed over iterations), the others 2B rows x 8 iterations
    assert [xb.calls[0][0] for xb in made] == [16, 16 * 2 * 8, 16 * 2 * 8, 16 * 2]
    assert all(not torch.equal(a, xb.w) for a, xb in zip(w0, made))


class _Recorder(FakeCrossbar):
    """A FakeCrossbar that keeps the (x, d) of its updates."""

    def update(self, x, d, lr):
        self.seen = (x.clone(), d.clone())
        super().update(x, d, lr)


def _margin(m, fn):
    return torch.nn.functional.softplus(-m) if fn == "logsigmoid" else 1 - torch.sigmoid(m)


@pytest.mark.parametrize("opts", [{}, {"loss": "hinton", "goodness": "mean", "theta": 0.3},
                                  {"goodness": "pnorm", "goodness_p": 3.0, "goodness_sign": "min", "loss_fn": "sigmoid"},
                                  {"goodness": "abs", "loss": "hinton", "theta": 2.0}])
def test_local_error_is_the_gradient_through_the_damped_update(opts):
    """d applied to the label's top-down layer = dL/dz of the mean loss over the training iterations,
    through h(t) = 0.3 h(t-1) + 0.7 relu(z(t)) with h(t-1) held constant (autograd reference)."""
    made = []
    cfg = FFConfig(analog_update="sgd", analog_bias=False, negatives="random", **opts)
    net = RecurrentFFNet([784, 9, 10], layer="analog", config=cfg, train_iterations=(1, 2),
                         crossbar_factory=lambda r, c, s: made.append(_Recorder(r, c, s)) or made[-1])
    x, y = synthetic(6, seed=10)
    w_up, w_down = made[0].w.clone(), made[1].w.clone()
    net.train_step(x, y, torch.Generator().manual_seed(2), lr=0.0)
    top, d = made[1].seen
    h = torch.relu(x @ w_up.t()).repeat(2, 1)  # the bottom-up pass
    z0 = (x.repeat(2, 1) @ w_up.t() + top @ w_down.t()).detach()
    sgn = -1.0 if cfg.goodness_sign == "min" else 1.0
    total = 0.0
    for _ in range(2):  # one hidden layer: z(t) is the same at every iteration, h(t) is not
        z = z0.clone().requires_grad_(True)
        h = 0.3 * h.detach() + 0.7 * torch.relu(z)
        s = sgn * goodness(h, cfg.goodness, cfg.goodness_p)
        if cfg.loss == "symba":
            loss = _margin(cfg.alpha * (s[:6] - s[6:]), cfg.loss_fn).mean()
        else:
            loss = (_margin(s[:6] - sgn * cfg.theta, cfg.loss_fn) + _margin(sgn * cfg.theta - s[6:], cfg.loss_fn)).mean()
        (loss / 2).backward()
        total = total + z.grad
    assert (z0 < 0).any()  # the ReLU mask matters here
    assert torch.allclose(d, total, rtol=1e-4, atol=1e-7)
    x_up, d_up = made[0].seen
    assert torch.equal(x_up, x) and torch.allclose(d_up, total[:6] + total[6:], rtol=1e-4, atol=1e-7)


def test_min_goodness_sign_predicts_the_lowest_goodness():
    x, _ = synthetic(5, dim=20, seed=11)
    hi = RecurrentFFNet([20, 6, 6, 10], config=FFConfig(seed=4))
    lo = RecurrentFFNet([20, 6, 6, 10], config=FFConfig(seed=4, goodness_sign="min"))
    assert torch.allclose(lo.goodness_per_label(x), -hi.goodness_per_label(x))
    assert torch.equal(lo.predict(x), hi.goodness_per_label(x).argmin(1))


# -------------------------------------------------------------------- learning and train_ff
def test_learns_the_synthetic_task_on_digital_layers():
    net = RecurrentFFNet([784, 32, 32, 10], config=FFConfig(lr=1e-2, cooldown=0.0))
    hist = train_ff(net, tiny_data(), epochs=2, batch_size=50, progress=False)
    assert hist[-1]["test_acc_goodness"] > 0.6  # chance: 0.1
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["test_acc_softmax"] is None and net.eval_counters.digital_macs > 0


def test_train_ff_checkpoint_resume_gives_identical_weights(tmp_path):
    def make():
        return RecurrentFFNet([784, 16, 16, 10], config=FFConfig(lr=1e-2, cooldown=0.5))

    data = tiny_data()
    straight = make()
    h_straight = train_ff(straight, data, epochs=3, batch_size=100, progress=False)
    ck = tmp_path / "rec.ckpt"
    first = make()
    with pytest.raises(_Stop):  # interrupted after epoch 1
        train_ff(first, data, epochs=3, batch_size=100, progress=False, checkpoint=ck, on_epoch=_stop_after(1))
    resumed = make()
    h_resumed = train_ff(resumed, data, epochs=3, batch_size=100, progress=False, checkpoint=ck, resume=True)
    assert_same_state(straight.state_dict(), resumed.state_dict())
    assert [h["train_loss"] for h in h_straight] == [h["train_loss"] for h in h_resumed]
    assert straight.total_counts() == resumed.total_counts()


class _Stop(Exception):
    pass


def _stop_after(n):
    def cb(m):
        if m["epoch"] == n:
            raise _Stop
    return cb
