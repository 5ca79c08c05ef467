"""DeepSeek-V4 engine. `load_model` is imported lazily so that importing the package (and
`dsv4 --help`) does not import torch."""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from .loader import load_model

        return load_model
    raise AttributeError(f"module 'dsv4.engine' has no attribute {name!r}")
