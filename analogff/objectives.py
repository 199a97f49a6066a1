"""FF's design space: goodness kinds, margin losses and peer normalisation, with closed-form errors.

:func:`analogff.ff.ff_loss_and_error` computes the default objective (sum- or mean-of-squares
goodness, positive data high, SymBa or Hinton's threshold loss through log-sigmoid) in closed
form; the options of ``FFConfig`` beyond it come here, each with its local error d = dL/dz:

* goodness kinds (``goodness``): "sum" / "mean" of squared activities (Hinton), "abs" (the sum of
  unsquared activities) and "pnorm" ((sum h^p)^(1/p), ``goodness_p``; a reproduction study found
  p-norms close to L2);
* ``goodness_sign="min"``: Hinton's "min ssq" (positive data gets *low* goodness);
* ``loss_fn="sigmoid"`` against the default log-sigmoid (the same study: log-sigmoid is better);
* peer normalisation (Hinton 2022): each unit's running mean activity is pulled towards the
  layer's mean; the form and the coefficient 0.03 are those of the loeweX/Forward-Forward
  reimplementation, not checked against Hinton's own code.

Each is tested against autograd (tests/test_ff.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from analogff.ff import FFConfig


def goodness(h: torch.Tensor, kind: str = "mean", p: float = 2.0) -> torch.Tensor:
    """Goodness of each row of ReLU activities h (>= 0): sum or mean of squares, "abs": sum of the
    activities, "pnorm": (sum h^p)^(1/p)."""
    if kind == "abs":
        return h.sum(1)
    if kind == "pnorm":
        return h.pow(p).sum(1).pow(1.0 / p)
    return (h * h).sum(1) if kind == "sum" else (h * h).mean(1)


def goodness_grad(h: torch.Tensor, kind: str = "mean", p: float = 2.0) -> torch.Tensor:
    """dG/dz of :func:`goodness` per unit, (B, n), for h = relu(z) (0 where z <= 0)."""
    if kind == "sum":
        return 2.0 * h
    if kind == "mean":
        return 2.0 * h / h.shape[1]
    active = h > 0
    if kind == "abs":
        return active.to(h.dtype)
    g = goodness(h, "pnorm", p)[:, None]  # d (sum h^p)^(1/p) / dh_j = h_j^(p-1) G^(1-p)
    grad = h.clamp_min(torch.finfo(h.dtype).tiny).pow(p - 1) * g.clamp_min(torch.finfo(h.dtype).tiny).pow(1 - p)
    return torch.where(active, grad, torch.zeros_like(h))


def margin_loss(m: torch.Tensor, fn: str = "logsigmoid") -> tuple[torch.Tensor, torch.Tensor]:
    """(f(m), f'(m)) per element: "logsigmoid" f = softplus(-m) = -log sigmoid(m); "sigmoid" f = 1 - sigmoid(m)."""
    if fn == "logsigmoid":
        return F.softplus(-m), -torch.sigmoid(-m)
    s = torch.sigmoid(m)
    return 1.0 - s, -s * (1.0 - s)


def ff_loss_and_error_general(h_pos, h_neg, cfg: "FFConfig", others: tuple | None = None):
    """:func:`analogff.ff.ff_loss_and_error` for any goodness kind, sign and margin loss f (``cfg.loss_fn``);
    ``others``: the other layers' goodness of the positive and negative rows (collaborative FF)."""
    sgn = 1.0 if cfg.goodness_sign == "max" else -1.0
    kind, p = cfg.goodness, cfg.goodness_p
    g_pos, g_neg = goodness(h_pos, kind, p), goodness(h_neg, kind, p)
    if others is not None:
        g_pos, g_neg = g_pos + others[0], g_neg + others[1]
    s_pos, s_neg = sgn * g_pos, sgn * g_neg
    b = s_pos.shape[0]
    if cfg.loss == "hinton":
        th = sgn * cfg.theta
        (f_pos, df_pos), (f_neg, df_neg) = margin_loss(s_pos - th, cfg.loss_fn), margin_loss(th - s_neg, cfg.loss_fn)
        loss = (f_pos + f_neg).mean()
        ds_pos, ds_neg = df_pos / b, -df_neg / b
    else:
        f, df = margin_loss(cfg.alpha * (s_pos - s_neg), cfg.loss_fn)
        loss = f.mean()
        ds_pos = cfg.alpha * df / b
        ds_neg = -ds_pos
    d = torch.cat([(sgn * ds_pos)[:, None] * goodness_grad(h_pos, kind, p),
                   (sgn * ds_neg)[:, None] * goodness_grad(h_neg, kind, p)])
    return loss, d


def peer_norm_loss_and_error(h_pos: torch.Tensor, running: torch.Tensor, coef: float, momentum: float = 0.9):
    """Peer normalisation (Hinton 2022; as loeweX/Forward-Forward implements it, coefficient 0.03): with each unit's running
    mean activity ``r = momentum r_old + (1 - momentum) mean_b h_pos`` (r_old fixed), the loss
    ``coef * mean_j (mean(r) - r_j)^2`` and its local error dL/dz on the positive rows, (B, n).
    Returns (loss, d, r): the caller keeps r as the new running mean."""
    b, n = h_pos.shape
    r = momentum * running + (1 - momentum) * h_pos.mean(0)
    dev = r - r.mean()
    loss = coef * dev.pow(2).mean()
    d = (coef * 2.0 / n * (1 - momentum) / b) * dev[None, :] * (h_pos > 0).to(h_pos.dtype)
    return loss, d, r
