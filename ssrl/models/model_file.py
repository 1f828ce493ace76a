"""The model file (`model.pt`): what carries a trained encoder from one stage to the next.

The one owner of its format. Every stage that trains an encoder writes it with
`save_model_file`; every stage that uses one (clustering, embedding, scoring, export, the
Python API) reads it with `load_encoder`, which rebuilds the encoder AND the exact front end it
was trained with. It holds tensors, strings and numbers only, so it loads with
`weights_only=True` (no code runs).

    {"format": 2,
     "encoder": state dict (the teacher's encoder where there is one),
     "model_cfg": the encoder's resolved config (ssrl.models.encoders.resolve_config),
     "frontend": Frontend.describe(),
     "meta": {"stage": "dino" | "ssrl" | "iterative" | "supervised", ...},
     "checksum": SHA-256 of the tensors (name, dtype, shape, bytes) and of the rest as JSON}

Loading checks, in this order, each failure one `InputError` line naming the file: the
checksum (a flipped byte anywhere in the weights or the config is found, not embedded with),
finite weights (a diverged training's NaN/Inf), and the metadata (a known preset and keys, a
front end that can be built, the same n_mels in both). A format-1 file (written before the
checksum existed) has nothing to verify: it loads with a warning that says to retrain; its
weights and metadata are still checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ssrl.files import InputError, save_torch
from ssrl.models.encoders import build_encoder, resolve_config
from ssrl.models.frontend import Frontend

FORMAT = 2
log = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    """An encoder (eval mode) with its front end and the model file's metadata."""

    encoder: nn.Module
    frontend: Frontend
    model_cfg: dict[str, Any]
    meta: dict[str, Any]


def save_model_file(path: str | os.PathLike, encoder: nn.Module, model_cfg: dict,
                    frontend: Frontend, meta: dict[str, Any] | None = None) -> None:
    """Write the model file atomically (the encoder's weights on CPU, and how to rebuild it)."""
    encoder = encoder.module if isinstance(encoder, nn.parallel.DistributedDataParallel) \
        else encoder
    state = {"format": FORMAT,
             "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
             "model_cfg": resolve_config({**model_cfg, "n_mels": frontend.n_mels}),
             "frontend": frontend.describe(), "meta": dict(meta or {})}
    state["checksum"] = checksum(state)
    save_torch(path, state)


def checksum(model: dict[str, Any]) -> str:
    """SHA-256 of a model file's content: every tensor (name, dtype, shape, bytes) and the
    format, model config, front end and metadata (as sorted JSON)."""
    h = hashlib.sha256()
    for name in sorted(model["encoder"]):
        t = model["encoder"][name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    rest = {k: model.get(k) for k in ("format", "model_cfg", "frontend", "meta")}
    h.update(json.dumps(rest, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _check_content(model: dict[str, Any], path: Path) -> None:
    """Checksum, finite weights, metadata: each failure one InputError naming the file."""
    if not isinstance(model["encoder"], dict) or not all(
            isinstance(t, torch.Tensor) for t in model["encoder"].values()):
        raise InputError(f"{path}: not a model file (its encoder is not a set of tensors)")
    if "checksum" not in model:
        log.warning("%s: model file without a checksum (written before model file format 2): "
                    "its weights cannot be verified; retrain to get a checked file", path)
    elif model["checksum"] != checksum(model):
        raise InputError(f"{path}: model file is corrupt: the checksum of its weights and "
                         "config does not match (changed after training); restore or retrain it")
    for name, t in model["encoder"].items():
        if torch.is_floating_point(t) and not torch.isfinite(t).all():
            raise InputError(f"{path}: model weight {name} holds NaN or infinite values (the "
                             "training diverged); retrain it")
    try:
        for key in ("model_cfg", "frontend", "meta"):
            if not isinstance(model.get(key, {}), dict):
                raise ValueError(f"{key} is not a mapping")
        cfg = resolve_config(model["model_cfg"])
        frontend = Frontend.from_description(model["frontend"])
        if cfg["n_mels"] != frontend.n_mels:
            raise ValueError(f"model n_mels {cfg['n_mels']} but front end n_mels "
                             f"{frontend.n_mels}")
    except Exception as err:  # noqa: BLE001 - any failure to rebuild is bad metadata
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: invalid model metadata ({text})") from None


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The model file's content, checked; InputError names a missing or foreign file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    try:
        model = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        text = " ".join(str(err).split())[:300] or type(err).__name__
        if text.startswith("Weights only load failed"):  # not torch's advice to run its code
            text = "it holds more than tensors, numbers and strings: damaged, or not ssrl's"
        raise InputError(f"{path}: cannot load model file ({text})") from None
    if not isinstance(model, dict) or not {"encoder", "model_cfg", "frontend"} <= set(model):
        raise InputError(f"{path}: not a model file (no encoder weights or model config; "
                         "a training checkpoint? give the stage's model.pt)")
    _check_content(model, path)
    return model


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that says which file does not fit which model."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).splitlines()[0:3])
        raise InputError(f"{source}: checkpoint does not match the configured model ({first}); "
                         "was it trained with another model config?") from None


def load_encoder(path: str | os.PathLike,
                 device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the encoder of a model file, in eval mode on `device`, with its front end."""
    model = load_model_file(path)
    encoder = build_encoder(model["model_cfg"])
    load_state_checked(encoder, model["encoder"], str(path))
    frontend = Frontend.from_description(model["frontend"])
    return LoadedModel(encoder.to(device).eval(), frontend.to(device), model["model_cfg"],
                       model.get("meta", {}))
