"""ssrl: self-supervised reflective learning of speaker embeddings, as a reproducible workflow.

`ssrl.load_model(path)` gives a trained model with `.embed(file_or_wave)` and `.score(a, b)`
(see `ssrl.api`). Importing `ssrl` stays cheap: torch is imported on the first `load_model`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ssrl.api import SpeakerModel

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def load_model(path: str | os.PathLike, device: str = "cpu", **options: Any) -> SpeakerModel:
    """The model of a model file (`model.pt`), ready to embed and score. `options`:
    `segment_seconds` (as `ssrl embed --segment-seconds`); see `ssrl.api.load_model`."""
    from ssrl.api import load_model as load

    return load(path, device, **options)
