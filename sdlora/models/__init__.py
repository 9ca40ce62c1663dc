"""Base models: the built-in ones and loading users' diffusers-format folders, offline."""

from sdlora.models.loading import Components, load_components, load_pipeline, resolve_model
from sdlora.models.registry import builtin_models

__all__ = ["Components", "load_components", "load_pipeline", "resolve_model", "builtin_models"]
