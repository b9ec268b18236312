"""Official YAML configs (BICLab/Spike-Driven-Transformer ``conf/**/*.yml``) with the official key semantics.

``official.py`` holds the semantics (key table, defaults, no-op keys and their warnings); this package adds
:func:`create_model_from_yaml`, which builds the model through the one model factory.
"""
from __future__ import annotations

import os
import warnings

from .official import (OFFICIAL_DEFAULTS, OFFICIAL_NOOP_KEYS, OFFICIAL_TO_MODEL, ConfigWarning, load_yaml,
                       model_kwargs_from_official, official_noop_warnings)

__all__ = ["OFFICIAL_DEFAULTS", "OFFICIAL_NOOP_KEYS", "OFFICIAL_TO_MODEL", "ConfigWarning", "load_yaml",
           "official_noop_warnings", "model_kwargs_from_official", "create_model_from_yaml"]


def create_model_from_yaml(path: str | os.PathLike, warn: bool = True, **overrides):
    """Build a model from an official YAML config file or one of our recipes (``models.build_model(config=...)``)."""
    from ..models.factory import build_model

    with warnings.catch_warnings():
        if not warn:
            warnings.simplefilter("ignore", ConfigWarning)
        return build_model(config=path, overrides=overrides)[0]
