"""Native CPU twins of `quant.py`'s round trips and of the indexer's Hadamard + FP4 step
(`csrc/quant.c`).

Each wrapper is one C call: at decode the tensors are a row or a few (a 1 x 512 FP8 round
trip takes well under a microsecond in C, so the wrapper's few torch calls are most of the
time), at prefill the C loops replace a dozen full-size torch passes. The quantization
results are the references' bit for bit; the Hadamard sums run as butterflies where the
reference multiplies by the ±1 matrix, so an fp32 sum can differ in its last bits (see
`hadamard_fp4`).
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import torch

from . import native

ACT = (torch.bfloat16, torch.float32)
"""The activation dtypes the C kernels take."""
MAX_BLOCK = 4096  # quantization blocks and Hadamard rows (csrc/quant.c's stack buffer)
_KERNELS: dict[ctypes.CDLL, SimpleNamespace] = {}


class NativeArgumentError(ValueError):
    """A native quantization wrapper was called with a tensor or block it does not take."""


def _kernels(lib: ctypes.CDLL) -> SimpleNamespace:
    """The C entry points of `csrc/quant.c`, declared once per loaded library."""
    if (k := _KERNELS.get(lib)) is None:
        P, I64, F32 = native.P, native.I64, native.F32
        trip = (P, P, I64, I64, I64, I64, I64, I64)
        k = _KERNELS[lib] = SimpleNamespace(
            fp8=native.declare(lib, "quant_fp8_round_trip", *trip),
            fp4=native.declare(lib, "quant_fp4_round_trip", *trip),
            hadamard=native.declare(
                lib, "quant_hadamard_fp4", P, P, I64, I64, F32, I64, I64, I64
            ),  # fmt: skip
        )
    return k


def supports(x: torch.Tensor, block: int) -> bool:
    """Whether the C round trips take x (fp32 or bf16, last dim a multiple of `block`)."""
    return x.dtype in ACT and 0 < block <= MAX_BLOCK and x.dim() > 0 and x.shape[-1] % block == 0


def _strided_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A non-contiguous x as (rows tensor, row stride): rows of the last dim with unit element
    stride and one stride between rows (a column slice such as the KV's nope dims needs no
    copy), else a contiguous copy."""
    n = x.shape[-1]
    if x.dim() == 2:
        x2 = x
    else:
        try:
            x2 = x.view(-1, n)
        except RuntimeError:  # leading dims that do not collapse
            x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1 or x2.stride(0) < n:
        x2 = x2.contiguous()
    return x2, x2.stride(0)


def _round_trip(fn, x: torch.Tensor, block: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Lean on purpose: at decode this wrapper, not the C call, is most of the time."""
    if not supports(x, block):
        raise NativeArgumentError(
            f"native quantization: x {x.dtype} {tuple(x.shape)} with block {block}; expected "
            f"fp32 or bf16 whose last dim is a multiple of the block (block <= {MAX_BLOCK})"
        )
    n = x.shape[-1]
    src, ldx = (x, n) if x.is_contiguous() else _strided_rows(x)
    y = torch.empty_like(x, dtype=out_dtype, memory_format=torch.contiguous_format)
    if n and (rows := y.numel() // n):
        fn(src.data_ptr(), y.data_ptr(), rows, n, ldx, block, x.dtype == torch.bfloat16,
           out_dtype == torch.bfloat16)  # fmt: skip
    return y


def act_quant_values(lib: ctypes.CDLL, x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """x act [..., N] -> fp32 [..., N]: `quant.act_quant_values_ref`, bit for bit."""
    return _round_trip(_kernels(lib).fp8, x, block, torch.float32)


def act_quant_dequant(lib: ctypes.CDLL, x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """x act [..., N] -> act [..., N]: `quant.act_quant_dequant_ref`, bit for bit."""
    return _round_trip(_kernels(lib).fp8, x, block, x.dtype)


def fp4_act_quant_dequant(lib: ctypes.CDLL, x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x act [..., N] -> act [..., N]: `quant.fp4_act_quant_dequant_ref`, bit for bit."""
    return _round_trip(_kernels(lib).fp4, x, block, x.dtype)


def hadamard_fp4(lib: ctypes.CDLL, x: torch.Tensor, fp4: bool, block: int = 32) -> torch.Tensor:
    """x act [..., n] (n a power of two) -> act [..., n]: `act(H·x · n^-½)` per row (the
    indexer's `rotate`), then with `fp4` the FP4 round trip of that act value in blocks of
    `block` (`fp4_act_quant_dequant`).

    The ±1 sums are exact sums of fp32 terms rounded at each butterfly, in another order
    than the reference's matmul, so they can differ in the last bits of fp32; after the
    rounding to the act dtype and the FP4 grid, an element rarely lands one step apart.
    """
    n = x.shape[-1] if x.dim() else 0
    if x.dtype not in ACT or n < 1 or n & (n - 1) or n > MAX_BLOCK or (fp4 and n % block):
        raise NativeArgumentError(
            f"native Hadamard: x {x.dtype} {tuple(x.shape)}, block {block}; expected fp32 or "
            f"bf16 with a power-of-two last dim <= {MAX_BLOCK}, a multiple of the block"
        )
    x = x.contiguous()
    y = torch.empty_like(x)
    if rows := x.numel() // n:
        _kernels(lib).hadamard(x.data_ptr(), y.data_ptr(), rows, n, n**-0.5, block,
                               x.dtype == torch.bfloat16, fp4)  # fmt: skip
    return y
