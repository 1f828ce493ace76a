"""The model file (`model.pt`): what carries a trained encoder from one stage to the next.

The one owner of its format. Every stage that trains an encoder writes it with
`save_model_file`; every stage that uses one (clustering, embedding, scoring, export, the
Python API) reads it with `load_encoder`, which rebuilds the encoder AND the exact front end it
was trained with. It holds tensors, strings and numbers only, so it loads with
`weights_only=True` (no code runs).

    {"format": 1,
     "encoder": state dict (the teacher's encoder where there is one),
     "model_cfg": the encoder's resolved config (ssrl.models.encoders.resolve_config),
     "frontend": Frontend.describe(),
     "meta": {"stage": "dino" | "ssrl" | "iterative" | "supervised", ...}}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ssrl.files import InputError, atomic_path
from ssrl.models.encoders import build_encoder, resolve_config
from ssrl.models.frontend import Frontend

FORMAT = 1


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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The model file's content, checked; InputError names a missing or foreign file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    try:
        model = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: cannot load model file ({err})") from None
    if not isinstance(model, dict) or not {"encoder", "model_cfg", "frontend"} <= set(model):
        raise InputError(f"{path}: not a model file (no encoder weights or model config; "
                         "a training checkpoint? give the stage's model.pt)")
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
