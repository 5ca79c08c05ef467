"""Typed errors of the engine; each message names the file, tensor or key at fault."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on bad input."""


class ConfigError(EngineError, ValueError):
    """A `config.json` that is malformed, inconsistent or unsupported."""


class CheckpointError(EngineError):
    """A checkpoint that is incomplete, corrupt or does not match its config."""
