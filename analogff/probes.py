"""Linear probes: how much each FF layer's activities tell about the class, layer by layer.

After training, a linear softmax classifier is fitted to each layer's normalised activities (one
neutral-label pass, as the softmax head sees them) on the first ``samples`` training images and
tested on the test set. This is the per-layer measure of the Trifecta thesis (a deep FF net's
upper layers should be no worse than its lower ones) and of the FF paper's own depth figures.

The probes are analysis, not part of the method: their passes run inside
:class:`analogff.counts.measured`, so they never enter the training or evaluation bill, and the
probe classifiers are ordinary autograd-trained ``nn.Linear`` layers (digital, off the chip).

A net provides its per-layer features by ``net.layer_features(x)`` (a list of (B, n_i) tensors);
an :class:`analogff.ff.FFNet` without it is read with the neutral label overlaid; any other net
without it gets no probes (an empty list).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from analogff.counts import measured


@torch.no_grad()
def layer_features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Normalised activities of every layer of ``net`` for images ``x`` (B, n_in), one tensor per layer."""
    if hasattr(net, "layer_features"):
        return net.layer_features(x)
    from analogff.ff import overlay_neutral

    cfg = net.config
    hs = net.activities(overlay_neutral(x, cfg.num_classes, cfg.neutral_value))
    return [net.normalize(i, h) for i, h in enumerate(hs)]


def _features(net: nn.Module, x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    was_training = net.training
    net.eval()
    dev = next(iter(net.buffers()), torch.empty(0)).device
    parts: list[list[torch.Tensor]] = []
    for s in range(0, x.shape[0], batch_size):
        parts.append([f.detach().cpu() for f in layer_features(net, x[s:s + batch_size].float().to(dev))])
    net.train(was_training)
    return [torch.cat(col) for col in zip(*parts)]


def fit_probe(f_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, *, epochs: int = 20,
              lr: float = 1e-2, batch_size: int = 100, seed: int = 0) -> nn.Linear:
    """A linear softmax classifier on features (N, n), trained with Adam on cross-entropy.

    The learning rate falls linearly from ``lr`` to 0 over the ``epochs``: the probe's answer is
    a converged fit, not the last iterate of a noisy one (with a constant rate, refits of the same
    features with other seeds differed by up to 3.6 pp on one layer of a trained 4-layer net).
    """
    g = torch.Generator().manual_seed(seed)
    probe = nn.Linear(f_train.shape[1], num_classes)
    with torch.no_grad():  # initialised from the generator, not torch's global RNG
        bound = 1.0 / f_train.shape[1] ** 0.5
        probe.weight.copy_(torch.rand(probe.weight.shape, generator=g) * 2 * bound - bound)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    n = f_train.shape[0]
    steps, step = epochs * -(-n // batch_size), 0
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                for group in opt.param_groups:
                    group["lr"] = lr * (1.0 - step / steps)
                opt.zero_grad()
                F.cross_entropy(probe(f_train[idx]), y_train[idx]).backward()
                opt.step()
                step += 1
    return probe


def layer_probe_accuracy(net: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                         test: tuple[torch.Tensor, torch.Tensor], *, samples: int = 10000, epochs: int = 20,
                         seed: int = 0, batch_size: int = 1000) -> list[float]:
    """Test accuracy of a linear probe on each layer of ``net`` (fractions, one per layer).

    The probe of layer i is trained on the first ``samples`` images of ``train`` and tested on all
    of ``test``; the net's counters are as before the call (:class:`analogff.counts.measured`).
    """
    if samples < 1:
        raise ValueError(f"samples={samples!r}; probes need at least one training image (or skip them)")
    from analogff.ff import FFNet

    if not hasattr(net, "layer_features") and not isinstance(net, FFNet):
        return []
    (x_tr, y_tr), (x_te, y_te) = train, test
    k = int(getattr(getattr(net, "config", None), "num_classes", 10))
    with measured(net):
        f_tr = _features(net, torch.as_tensor(x_tr)[:samples], batch_size)
        f_te = _features(net, torch.as_tensor(x_te), batch_size)
    y_tr = torch.as_tensor(y_tr)[:samples].long()
    y_te = torch.as_tensor(y_te).long()
    out = []
    for i, (a, b) in enumerate(zip(f_tr, f_te)):
        probe = fit_probe(a, y_tr, k, epochs=epochs, seed=seed + i)
        with torch.no_grad():
            out.append(float((probe(b).argmax(1) == y_te).float().mean()))
    return out
