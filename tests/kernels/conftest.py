"""Kernel tests run the Triton twins on a GPU when there is one, else under the interpreter.

TRITON_INTERPRET must be set before the kernels' `@triton.jit` decorators run, i.e. before
any `*_triton` module is imported; test modules import them inside the tests.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp64 (0 when both are zero)."""
    a, b = a.double(), b.double()
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom else (a - b).norm().item()


def native_build(request: pytest.FixtureRequest, tmp_path_factory, name: str):
    """The C library `name` for a fixture parametrized over builds: "native", as the engine
    loads it; "no-bf16", without the AVX-512 BF16 dot products (the fp32 FMA loops that CPUs
    before them run); any other parameter, built without AVX-512 into a temporary cache, so
    the portable fallback loops are tested too."""
    import ctypes

    from dsv4.kernels import native

    if request.param == "native":
        return native.load(name)
    mp = pytest.MonkeyPatch()
    mp.setenv("DSV4_CACHE_DIR", str(tmp_path_factory.mktemp("portable")))
    flags = "-mno-avx512bf16" if request.param == "no-bf16" else "-mno-avx512f"
    mp.setenv("DSV4_NATIVE_CFLAGS", flags)
    try:
        return ctypes.CDLL(str(native.build(name)))
    finally:
        mp.undo()
