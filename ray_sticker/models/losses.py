"""Loss terms shared by several models. Each is checked against hand-computed values in
``tests/test_losses.py``; model-specific losses live in their model's module."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in fp32 over rows whose label is not -1 (unlabelled rows are
    ignored); 0 (with a gradient path) when no row is labelled."""
    if bool((target >= 0).any()):
        return F.cross_entropy(logits.float(), target, ignore_index=-1)
    return logits.float().sum() * 0.0


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """One-directional InfoNCE: row i of ``query`` must pick row i of ``key`` among all keys,
    ``-mean_i log softmax_j(cos(q_i, k_j) / t)[i]``. Inputs ``(B, D)``, normalised here."""
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(key.float(), dim=-1)
    logits = q @ k.t() / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """CLIP's loss: the mean of InfoNCE a->b and b->a."""
    return 0.5 * (info_nce(a, b, temperature) + info_nce(b, a, temperature))


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) with P = softmax(p_logits), Q = softmax(q_logits), mean over the batch."""
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(KL(P || Q) + KL(Q || P)) / 2, as used for R-Drop style two-view consistency."""
    return 0.5 * (kl_div(p_logits, q_logits) + kl_div(q_logits, p_logits))
