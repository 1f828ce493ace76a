"""Training heads on top of the encoder's embedding.

- `DINOHead` (stage 1): MLP -> L2-normalised bottleneck -> weight-normalised linear layer onto
  many prototypes. With `norm_last_layer` every prototype has norm 1, so the logits are cosines
  and the head cannot reduce the loss by growing its weights.
- `AAMSoftmax` (stage 2): additive angular margin softmax (ArcFace). Its weight rows are the
  cluster prototypes: the trainer copies the k-means centroids into `weight`, and clusters that
  lose all their utterances are masked out (`active`) for good.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _init_linear(layer: nn.Linear) -> None:
    nn.init.trunc_normal_(layer.weight, std=0.02)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight = g * v / ||v|| (row-wise), written out explicitly.

    With `fix_norm` the gains g stay at 1 and are not trained, so each output is the cosine
    between the (normalised) input and a prototype direction v_k.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_norm: bool = True) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.v, std=0.02)
        self.g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.g * F.normalize(self.v, dim=1))


class DINOHead(nn.Module):
    """Embedding `[B, in_dim]` -> prototype logits `[B, out_dim]` (before temperature)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        use_bn: bool = True,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < n_layers - 1:  # no BN / GELU after the bottleneck projection
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                _init_linear(layer)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The prototype layer's parameters (v, g): the trainer drops their gradients in epoch 0,
        which keeps the prototypes from collapsing while the MLP is still random."""
        return list(self.last_layer.parameters())

    def forward(self, emb: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(emb), dim=-1))


class AAMSoftmax(nn.Module):
    """ArcFace loss over K prototype rows `weight` `[K, D]`.

    Target logit s * cos(theta + m), other logits s * cos(theta). Where theta + m would pass pi
    (cos theta < cos(pi - m)), cos(theta + m) stops being monotonic, so the usual fallback
    s * (cos theta - m * sin(pi - m)) is used instead. Removed classes get -inf logits and thus
    probability 0. All math is float32, also under autocast.
    """

    def __init__(
        self, embed_dim: int, n_classes: int, scale: float = 32.0, margin: float = 0.2
    ) -> None:
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(n_classes, embed_dim))
        nn.init.xavier_normal_(self.weight)

    def cosine(self, emb: Tensor, active: Tensor | None = None) -> Tensor:
        """Cosine similarity `[B, K]` between embeddings and prototypes; -inf where not active."""
        with torch.autocast(device_type=emb.device.type, enabled=False):
            cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        if active is not None:
            cos = cos.masked_fill(~active, float("-inf"))
        return cos

    def logits(self, emb: Tensor, labels: Tensor, active: Tensor | None = None) -> Tensor:
        """Scaled logits `[B, K]` with the angular margin applied to each sample's label."""
        cos = self.cosine(emb).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        m = self.margin
        sin = torch.sqrt(1.0 - cos.square())
        with_margin = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        with_margin = torch.where(cos > math.cos(math.pi - m), with_margin, cos - m * math.sin(m))
        target = F.one_hot(labels, cos.shape[1]).bool()
        out = self.scale * torch.where(target, with_margin, cos)
        if active is not None:
            out = out.masked_fill(~active, float("-inf"))
        return out

    def forward(self, emb: Tensor, labels: Tensor, active: Tensor | None = None) -> Tensor:
        """Per-sample cross-entropy `[B]` (a sample labelled with a removed class gets +inf)."""
        return F.cross_entropy(self.logits(emb, labels, active), labels, reduction="none")
