"""Learned restoration models of lowdose.

``from lowdose.models import load, available`` gives ready denoisers by name
(shipped weights, no download) or by checkpoint path. Importing this package
does not import the training code.
"""

from .checkpoint import CheckpointError
from .registry import ModelNotFoundError, available, default_live_model, load

__all__ = ["CheckpointError", "ModelNotFoundError", "available", "default_live_model", "load"]
