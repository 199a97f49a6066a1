"""Linear probes (analogff.probes): a probe finds the class where a layer's features hold it and not
where they don't, and the probes' passes stay out of the net's counters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from analogff.counts import OpCounts
from analogff.probes import layer_probe_accuracy
from ffhelpers import tiny_data, tiny_net

torch.set_num_threads(1)


class TwoFeatureNet(nn.Module):
    """Layer 0 encodes the label (one-hot plus noise); layer 1 is noise only."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))
        self.counters = OpCounts()
        self.g = torch.Generator().manual_seed(1)

    def layer_features(self, x):
        y = x[:, 0].long()
        self.counters.mvms += x.shape[0]
        informative = nn.functional.one_hot(y, 10).float() + 0.1 * torch.randn(x.shape[0], 10, generator=self.g)
        return [informative, torch.randn(x.shape[0], 10, generator=self.g)]


def _labelled(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return torch.cat([y[:, None].float(), torch.rand(n, 3, generator=g)], 1), y


def test_probe_finds_the_class_where_the_features_hold_it():
    net = TwoFeatureNet()
    acc = layer_probe_accuracy(net, _labelled(500, 0), _labelled(300, 1), samples=400, epochs=60)
    assert len(acc) == 2
    assert acc[0] > 0.95 and acc[1] < 0.25, acc
    assert net.counters.mvms == 0  # the probes' passes are analysis: the counters are as before


def test_probes_of_a_trained_ff_net_one_per_layer_and_counters_untouched():
    from analogff.train import train_ff

    net = tiny_net()
    data = tiny_data()
    train_ff(net, data, epochs=2, batch_size=50, seed=0, progress=False)
    before = net.total_counts().as_dict()
    acc = layer_probe_accuracy(net, data["train"], data["test"], samples=500, epochs=5)
    assert len(acc) == len(net.layers) and all(a > 0.5 for a in acc), acc  # 10 classes: chance 0.1
    assert net.total_counts().as_dict() == before


def test_probe_needs_samples():
    with pytest.raises(ValueError, match="at least one training image"):
        layer_probe_accuracy(TwoFeatureNet(), _labelled(10, 0), _labelled(10, 1), samples=0)


def test_unsupervised_net_gets_a_probe_per_layer():
    from analogff.ff import FFConfig
    from analogff.train import train_ff
    from analogff.unsupervised import UnsupervisedFFNet

    net = UnsupervisedFFNet([784, 24, 24, 24], config=FFConfig(lr=1e-2, head_lr=1e-2, cooldown=0.0))
    data = tiny_data()
    train_ff(net, data, epochs=1, batch_size=50, seed=0, progress=False)
    acc = layer_probe_accuracy(net, data["train"], data["test"], samples=500, epochs=5)
    assert len(acc) == 3 and all(0.0 <= a <= 1.0 for a in acc) and max(acc) > 0.3, acc


def test_recurrent_net_gets_a_probe_per_hidden_layer():
    from analogff.ff import FFConfig
    from analogff.recurrent import RecurrentFFNet

    net = RecurrentFFNet([784, 20, 20, 10], config=FFConfig())
    data = tiny_data()
    before = net.counters.as_dict()
    acc = layer_probe_accuracy(net, data["train"], data["test"], samples=500, epochs=5)
    assert len(acc) == 2 and max(acc) > 0.3, acc  # the synthetic classes show even in random features
    assert net.counters.as_dict() == before


def test_probe_is_a_converged_fit_not_a_noisy_last_iterate():
    """Refits of the same features with other seeds agree: the answer is the features', not the
    seed's (with a constant learning rate, refits of real features differed by pp)."""
    from analogff.data import load_fashion_mnist
    from analogff.probes import fit_probe

    x, y = load_fashion_mnist("train")
    f = torch.as_tensor(x[:3000]).float()
    f = (f - f.mean(0)) / (f.std(0) + 1e-3)  # unit-variance features, as batch norm gives the probes
    y = torch.as_tensor(y[:3000]).long()
    accs = []
    for seed in range(4):
        probe = fit_probe(f[:2000], y[:2000], 10, epochs=10, seed=seed)
        with torch.no_grad():
            accs.append(float((probe(f[2000:]).argmax(1) == y[2000:]).float().mean()))
    assert max(accs) - min(accs) <= 0.005, accs
