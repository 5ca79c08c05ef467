"""Choose between a kernel's torch reference and its Triton twin.

`DSV4_KERNELS` = `torch` (never Triton), `triton` (always; on CPU this needs
`TRITON_INTERPRET=1`), or unset/`auto` (Triton only when every tensor is on CUDA and triton
imports). The decision is made per call so that tests can switch it with the environment.
"""

from __future__ import annotations

import functools
import os

import torch

_MODES = ("torch", "triton", "auto")


class DispatchError(ValueError):
    """`DSV4_KERNELS` holds a value that is not one of `torch`, `triton`, `auto`."""


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether `import triton` works on this platform (cached)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import time
        return False
    return True


def kernels_mode() -> str:
    """The `DSV4_KERNELS` setting, validated (default `auto`)."""
    mode = os.environ.get("DSV4_KERNELS", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise DispatchError(f"DSV4_KERNELS={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the dispatchers should call the Triton kernel for these tensors."""
    mode = kernels_mode()
    if mode == "torch":
        return False
    if mode == "triton":
        return True
    return bool(tensors) and all(t.is_cuda for t in tensors) and triton_available()
