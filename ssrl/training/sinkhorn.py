"""Sinkhorn balancing (SwAV-style): SSRL's optional balanced label assignment (`ssrl.sinkhorn`)."""

from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, n_iter: int = 3, epsilon: float = 0.05,
             active: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced soft assignment of a batch to the active clusters (SwAV-style), no gradient.

    Starts from Q proportional to exp(logits / epsilon) over the active columns of the [B, K]
    matrix and alternately rescales it so that every active cluster holds 1/K_active of the
    batch mass and every sample 1/B, `n_iter` times each, ending with the per-sample step.
    Runs in the log domain in float32 (no overflow at small epsilon). Returns [B, K]
    probabilities: each row sums to 1, inactive columns (active[k] False) are exactly 0.
    """
    scores = logits.detach().float() / epsilon
    b, k = scores.shape
    cols = (torch.arange(k, device=scores.device) if active is None
            else torch.nonzero(active.to(scores.device).bool()).flatten())
    if cols.numel() == 0:
        raise ValueError("sinkhorn: no active cluster")
    log_q = scores[:, cols]
    log_b = torch.log(torch.tensor(float(b)))
    log_k = torch.log(torch.tensor(float(cols.numel())))
    for _ in range(n_iter):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_k  # clusters: 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_b  # samples: 1/B
    out = torch.zeros_like(scores)
    out[:, cols] = torch.softmax(log_q, dim=1)  # = exp(log_q) * B once the rows hold 1/B
    return out
