"""Shared pieces of the Triton kernels: exact rounding helpers and host-side argument checks.

Why the rounding helpers exist: a kernel must give the same bits on a GPU and under the
Triton interpreter (our CPU test bed). The interpreter's fp32 -> bf16 and fp32 -> fp8 casts
truncate (and do not saturate), while GPUs round to nearest even. Every helper below first
rounds an fp32 value to the target grid with integer/fp32 arithmetic that is exact on both,
so the final cast only ever sees representable values and is exact everywhere.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# The interpreter's tl.dot on bf16 operands is wrong (numpy has no bf16), so interpreted
# kernels take the fp32 IEEE path; read once, like the decorators that also depend on it.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


class KernelArgumentError(ValueError):
    """A Triton wrapper was called with a tensor of the wrong shape, dtype, device or layout."""


def check_tensor(
    name: str,
    t: torch.Tensor,
    dtypes: tuple[torch.dtype, ...],
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> None:
    """Raise KernelArgumentError unless `t` has one of `dtypes`, `ndim` dims, the given
    `shape` (None = any size in that dim) and a unit stride in its last dim."""
    where = f"argument `{name}`"
    if t.dtype not in dtypes:
        raise KernelArgumentError(f"{where}: dtype {t.dtype}, expected one of {dtypes}")
    if ndim is not None and t.dim() != ndim:
        raise KernelArgumentError(f"{where}: {t.dim()} dims {tuple(t.shape)}, expected {ndim}")
    if shape is not None:
        ok = len(shape) == t.dim() and all(
            s is None or s == d for s, d in zip(shape, t.shape, strict=True)
        )
        if not ok:
            want = tuple("*" if s is None else s for s in shape)
            raise KernelArgumentError(f"{where}: shape {tuple(t.shape)}, expected {want}")
    if t.numel() > 0 and t.dim() > 0 and t.stride(-1) != 1 and t.shape[-1] > 1:
        raise KernelArgumentError(f"{where}: last dim must be contiguous, strides {t.stride()}")


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise KernelArgumentError(f"tensors on different devices: {devices}")
    return next(iter(devices.values()))


def fp8_dot_supported(device: torch.device) -> bool:
    """Whether tl.dot takes e4m3 operands on this device: tensor cores have FP8 from sm_89
    (Ada, Hopper); the interpreter emulates it. Elsewhere the kernels upcast to bf16, which
    holds every e4m3 value exactly, so the products are the same."""
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 9)


def next_pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum): tl.arange and tl.dot need it."""
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


@triton.jit
def dot_bf16_exact(a, b):
    """a @ b with fp32 accumulation, for operands whose values are bf16-representable:
    bf16 tensor cores on a GPU, IEEE fp32 under the interpreter (same products)."""
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)


@triton.jit
def dot_fp8(a, b, FP8_DOT: tl.constexpr):
    """a @ b for e4m3 operands with fp32 accumulation (bf16 tensor cores without FP8 ones)."""
    if FP8_DOT:
        return tl.dot(a, b, out_dtype=tl.float32)
    return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)


@triton.jit
def _bits(x):
    return x.to(tl.uint32, bitcast=True)


@triton.jit
def _from_bits(b):
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _rint(x):
    # Round half to even for |x| < 2^22: adding 1.5 * 2^23 pushes the fraction out of the
    # fp32 mantissa, and fp32 addition rounds to nearest even (an fma of x*2^k + c keeps it).
    return (x + 12582912.0) - 12582912.0


@triton.jit
def round_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), still held in fp32."""
    b = _bits(x)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return _from_bits(b)


@triton.jit
def pow2_ceil(x):
    """Smallest power of two >= x for positive normal fp32 x, from the IEEE bits
    (exponent - 127, +1 when the mantissa is non-zero), as the reference computes it."""
    b = _bits(x)
    e = (b >> 23) & 0xFF
    e = tl.where((b & 0x7FFFFF) != 0, e + 1, e)
    return _from_bits(e << 23)


@triton.jit
def pow2_recip(s):
    """1/s, exactly, for a power of two s in [2^-126, 2^126] (from the exponent bits).
    Kernels multiply by it instead of dividing: Triton's fp32 `/` compiles to a division
    within 2 ulp on NVIDIA GPUs (div.full), not the IEEE one torch uses."""
    return _from_bits((254 - ((_bits(s) >> 23) & 0xFF)) << 23)


@triton.jit
def round_e4m3(y):
    """fp32 with |y| <= 448 -> the nearest float8_e4m3fn value (ties to even), in fp32."""
    b = _bits(y)
    sign = b & 0x80000000
    a = b & 0x7FFFFFFF
    # Normal range (|y| >= 2^-6): keep 3 mantissa bits.
    normal = (a + 0x7FFFF + ((a >> 20) & 1)) & 0xFFF00000
    # Subnormal range: multiples of 2^-9.
    sub = _bits(_rint(_from_bits(a) * 512.0) * (1.0 / 512.0))
    r = tl.where(a >= 0x3C800000, normal, sub)
    return _from_bits(r | sign)


@triton.jit
def round_e2m1(y):
    """fp32 with |y| <= 6 -> the nearest e2m1 value (0, .5, 1, 1.5, 2, 3, 4, 6; ties to
    even), in fp32. The grid step is 0.5 below 2, 1 below 4, then 2."""
    b = _bits(y)
    sign = b & 0x80000000
    a = _from_bits(b & 0x7FFFFFFF)
    step = tl.where(a < 2.0, 0.5, tl.where(a < 4.0, 1.0, 2.0))
    r = _rint(a * pow2_recip(step)) * step
    return _from_bits(_bits(r) | sign)


@triton.jit
def decode_e2m1(code):
    """uint8/int32 e2m1 codes 0..15 -> fp32 (bit 3 is the sign)."""
    c = code.to(tl.int32)
    mag = c & 7
    exp = mag >> 1
    man = (mag & 1).to(tl.float32)
    # mag 0/1 is the subnormal 0 / 0.5; otherwise (1 + man/2) * 2^(exp-1).
    pow2 = (1 << tl.maximum(exp - 1, 0)).to(tl.float32)
    val = tl.where(exp == 0, man * 0.5, (1.0 + man * 0.5) * pow2)
    return tl.where((c & 8) != 0, -val, val)


@triton.jit
def e8m0_to_fp32(s):
    """uint8 e8m0 exponent byte -> 2^(byte - 127) in fp32 (byte 0 is the subnormal 2^-127)."""
    b = s.to(tl.uint32)
    return _from_bits(tl.where(b == 0, 0x400000, b << 23))
