"""Speaker encoders: features `[B, n_mels, T]` -> embeddings `[B, embed_dim]`.

- ECAPA-TDNN (Desplanques et al., 2020), the SSRL encoder: a k=5 TDNN layer, three SE-Res2Blocks
  (k=3, dilations 2/3/4), multi-layer feature aggregation, attentive statistics pooling with
  global context, BN, linear, BN. Every TDNN layer is conv -> ReLU -> BN.
- "Thin" ResNet34 (32-64-128-256 channels, 3-4-6-3 basic blocks) on the mel map as a 1-channel
  image, statistics pooling, linear: the usual alternative encoder.

`build_encoder(cfg)` takes the config's `model` section. A named preset (`PRESETS`) can stand in
for the keys; explicit keys override it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULTS: dict = {
    "arch": "ecapa",
    "n_mels": 80,
    "channels": 1024,
    "embed_dim": 512,
    "scale": 8,
    "se_channels": 128,
    "attention_channels": 128,
    "mfa_channels": None,  # None means 3 * channels
    "base_channels": 32,  # resnet34 only
}

PRESETS: dict[str, dict] = {
    "ecapa_c1024": {"arch": "ecapa", "channels": 1024, "embed_dim": 512},
    "ecapa_c512": {"arch": "ecapa", "channels": 512, "embed_dim": 512},
    "ecapa_c256": {"arch": "ecapa", "channels": 256, "embed_dim": 512},
    "ecapa_tiny": {
        "arch": "ecapa",
        "channels": 64,
        "embed_dim": 128,
        "scale": 4,
        "se_channels": 32,
        "attention_channels": 32,
    },
    "resnet34": {"arch": "resnet34", "base_channels": 32, "embed_dim": 512},
}


# --------------------------------------------------------------------------------------------
# ECAPA-TDNN


class TDNNBlock(nn.Module):
    """Dilated 1-D convolution -> ReLU -> BatchNorm, keeping the time length ("same" padding)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=pad)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net: split channels into `scale` groups; group i (i >= 1) is convolved after adding the
    previous group's output, so later groups see growing receptive fields. Group 0 passes as is."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels {channels} must be divisible by Res2Net scale {scale}")
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(
            TDNNBlock(width, width, kernel, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        groups = x.chunk(self.scale, dim=1)
        out = [groups[0]]
        y = groups[0]
        for i, block in enumerate(self.blocks):
            y = block(groups[i + 1]) if i == 0 else block(groups[i + 1] + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SqueezeExcite(nn.Module):
    """Channel gates from the time-averaged activations (bottleneck `se_channels`)."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.down = nn.Conv1d(channels, se_channels, 1)
        self.up = nn.Conv1d(se_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=2, keepdim=True)
        return x * torch.sigmoid(self.up(F.relu(self.down(s))))


class SERes2Block(nn.Module):
    """1x1 TDNN -> Res2Net dilated TDNN -> 1x1 TDNN -> SE, plus the residual connection."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se: int) -> None:
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, 1)
        self.res2 = Res2Conv(channels, kernel, dilation, scale)
        self.tdnn2 = TDNNBlock(channels, channels, 1)
        self.se = SqueezeExcite(channels, se)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.se(self.tdnn2(self.res2(self.tdnn1(x))))


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and std over time -> `[B, 2C]`.

    Global context: the attention sees each frame concatenated with the utterance's plain mean and
    std, so frame weights depend on the whole utterance. The attention is per channel (C weights
    per frame), softmax over time. The statistics are computed in float32.
    """

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.hidden = TDNNBlock(3 * channels, attention_channels, 1)
        self.score = nn.Conv1d(attention_channels, channels, 1)

    @staticmethod
    def _stats(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        mean = (w * x).sum(dim=2)
        var = (w * x.square()).sum(dim=2) - mean.square()
        return mean, var.clamp(min=1e-6).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        mean, std = self._stats(x32, torch.full_like(x32[:, :1], 1.0 / x.shape[2]))
        context = torch.cat([x32, mean[..., None].expand_as(x32), std[..., None].expand_as(x32)], 1)
        scores = self.score(torch.tanh(self.hidden(context.to(x.dtype))))
        w = torch.softmax(scores.float(), dim=2)
        mean, std = self._stats(x32, w)
        return torch.cat([mean, std], dim=1).to(x.dtype)


class ECAPATDNN(nn.Module):
    def __init__(
        self,
        n_mels: int = 80,
        channels: int = 1024,
        embed_dim: int = 512,
        scale: int = 8,
        se_channels: int = 128,
        attention_channels: int = 128,
        mfa_channels: int | None = None,
    ) -> None:
        super().__init__()
        mfa = mfa_channels or 3 * channels
        self.embed_dim = embed_dim
        self.layer1 = TDNNBlock(n_mels, channels, 5)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, 3, dilation, scale, se_channels) for dilation in (2, 3, 4)
        )
        self.mfa = TDNNBlock(3 * channels, mfa, 1)
        self.pool = AttentiveStatsPool(mfa, attention_channels)
        self.pool_bn = nn.BatchNorm1d(2 * mfa)
        self.fc = nn.Linear(2 * mfa, embed_dim)
        self.emb_bn = nn.BatchNorm1d(embed_dim)

    def forward(self, feats: Tensor) -> Tensor:
        x = self.layer1(feats)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        return self.emb_bn(self.fc(self.pool_bn(self.pool(x))))


# --------------------------------------------------------------------------------------------
# ResNet34


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a strided 1x1 conv + BN on the shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class ResNet34(nn.Module):
    """Thin ResNet34 over the `[n_mels, T]` map; frequency and time are both downsampled 8x."""

    def __init__(self, n_mels: int = 80, base_channels: int = 32, embed_dim: int = 512) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        c = base_channels
        self.stem = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        stages = []
        c_in = c
        for i, n_blocks in enumerate((3, 4, 6, 3)):
            c_out = c * 2**i
            for j in range(n_blocks):
                stages.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        freq = n_mels
        for _ in range(3):
            freq = (freq + 1) // 2  # k=3, padding 1, stride 2
        self.fc = nn.Linear(2 * c_in * freq, embed_dim)

    def forward(self, feats: Tensor) -> Tensor:
        x = self.stages(self.stem(feats[:, None]))  # [B, C, F', T']
        x32 = x.flatten(1, 2).float()  # [B, C * F', T'], statistics in float32
        std = x32.var(dim=2, unbiased=False).clamp(min=1e-6).sqrt()
        return self.fc(torch.cat([x32.mean(dim=2), std], dim=1).to(x.dtype))


# --------------------------------------------------------------------------------------------


def resolve_config(cfg: dict) -> dict:
    """Defaults <- preset <- explicit keys. Unknown keys (and presets) raise ValueError."""
    cfg = dict(cfg)
    merged = dict(DEFAULTS)
    preset = cfg.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
        merged.update(PRESETS[preset])
    for key in cfg:
        if key not in DEFAULTS:
            raise ValueError(f"unknown model config key {key!r}; known: {sorted(DEFAULTS)}")
    merged.update(cfg)
    return merged


def build_encoder(cfg: dict) -> nn.Module:
    """Build the encoder described by the config's `model` section."""
    c = resolve_config(cfg)
    if c["arch"] == "ecapa":
        return ECAPATDNN(
            n_mels=c["n_mels"],
            channels=c["channels"],
            embed_dim=c["embed_dim"],
            scale=c["scale"],
            se_channels=c["se_channels"],
            attention_channels=c["attention_channels"],
            mfa_channels=c["mfa_channels"],
        )
    if c["arch"] == "resnet34":
        return ResNet34(
            n_mels=c["n_mels"], base_channels=c["base_channels"], embed_dim=c["embed_dim"]
        )
    raise ValueError(f"unknown model arch {c['arch']!r}; expected 'ecapa' or 'resnet34'")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
