"""Model loading by spec (hub id or local path) and tiny random builders of the real architectures."""

from groundflow.models.spec import ModelSpec, offline_hub, resolve_device, resolve_dtype

__all__ = ["ModelSpec", "offline_hub", "resolve_device", "resolve_dtype"]
