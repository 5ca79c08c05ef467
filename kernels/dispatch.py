"""Choose between a kernel's torch reference, its Triton twin and its native CPU twin.

`DSV4_KERNELS` = `torch` (the torch references only), `triton` (Triton always; on CPU this
needs `TRITON_INTERPRET=1`), `native` (the C kernels of `native.py` for CPU tensors; an
error when they cannot be built), or unset/`auto` (Triton when every tensor is on CUDA and
triton imports; the C kernels when every tensor is on the CPU and they build). The decision
is made per call so that tests can switch it with the environment.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator

import torch

from . import native

_MODES = ("torch", "triton", "native", "auto")


class DispatchError(ValueError):
    """`DSV4_KERNELS` holds a value that is not one of `torch`, `triton`, `native`, `auto`."""


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether `import triton` works on this platform (cached)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import time
        return False
    return True


_PINNED: contextvars.ContextVar[str | None] = contextvars.ContextVar("dsv4_kernels", default=None)


def kernels_mode() -> str:
    """The `DSV4_KERNELS` setting, validated (default `auto`); inside `pinned_mode`, the
    setting read when it was entered."""
    return _PINNED.get() or _parse_mode(os.environ.get("DSV4_KERNELS"))


@contextlib.contextmanager
def pinned_mode() -> Iterator[str]:
    """Read `DSV4_KERNELS` once for the block: a forward pass dispatches a few thousand ops,
    and reading the environment for each of them cost more than some of the kernels."""
    token = _PINNED.set(_parse_mode(os.environ.get("DSV4_KERNELS")))
    try:
        yield _PINNED.get()
    finally:
        _PINNED.reset(token)


@functools.lru_cache(maxsize=16)
def _parse_mode(raw: str | None) -> str:
    mode = (raw or "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise DispatchError(f"DSV4_KERNELS={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the dispatchers should call the Triton kernel for these tensors."""
    mode = kernels_mode()
    if mode in ("torch", "native"):
        return False
    if mode == "triton":
        return True
    return bool(tensors) and all(t.is_cuda for t in tensors) and triton_available()


def native_lib(name: str, *tensors: torch.Tensor):
    """The C library `name` (`native.library`) when the dispatchers should call it for these
    tensors, else None. In `native` mode a library that cannot be built is an error.

    Called for every op of a decode step, so it is kept to a few attribute reads."""
    mode = kernels_mode()
    if mode == "torch" or mode == "triton":
        return None
    for t in tensors:
        if not t.is_cpu:
            return None
    if mode == "native":
        return native.load(name)
    return native.library(name)
