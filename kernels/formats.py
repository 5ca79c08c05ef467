"""Bit-level number formats of the DeepSeek-V4 checkpoints (SPEC §3.3, §6).

* ue8m0 (`float8_e8m0fnu`): one unsigned byte b, value 2^(b-127); 0xFF is NaN.
* e4m3 (`float8_e4m3fn`): torch's own cast (round to nearest even, saturating at ±448 after
  the clamp the callers apply).
* e2m1 (FP4): codes 0..7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign. Two codes per byte,
  the LOW nibble holds the even element (the layout of the routed experts in the checkpoint).

Weights: FP8 with one ue8m0 scale per 128x128 block; FP4 with one ue8m0 scale per 32
consecutive input elements (MXFP4 layout).
"""

from __future__ import annotations

import functools

import torch

FP8_MAX = 448.0
FP4_MAX = 6.0
FP8_BLOCK = 128
FP4_BLOCK = 32
_MIN_NORMAL = 2.0**-126

# e2m1 magnitudes by code 0..7; codes 8..15 are the same values negated (8 is -0.0).
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Midpoints between neighbouring magnitudes. A tie goes to the even code, so the midpoint
# above an even code rounds down (strict >) and the one above an odd code rounds up (>=).
_TIE_DOWN = (0.25, 1.25, 2.5, 5.0)  # above codes 0, 2, 4, 6
_TIE_UP = (0.75, 1.75, 3.5)  # above codes 1, 3, 5


def e8m0_to_fp32(s: torch.Tensor) -> torch.Tensor:
    """2^(b-127) for ue8m0 bytes given as `float8_e8m0fnu` or `uint8`; 0xFF gives NaN."""
    b = s.view(torch.uint8) if s.dtype == torch.float8_e8m0fnu else s
    if b.dtype != torch.uint8:
        raise TypeError(f"e8m0_to_fp32: expected float8_e8m0fnu or uint8, got {s.dtype}")
    # one table lookup: the decode runs on every GEMM call, where op count matters
    return _e8m0_table(b.device).index_select(0, b.reshape(-1).to(torch.int32)).view(b.shape)


@functools.lru_cache(maxsize=8)
def _e8m0_table(device: torch.device) -> torch.Tensor:
    """fp32 [256]: the value of each ue8m0 byte."""
    bits = torch.arange(256, dtype=torch.int32) << 23  # the byte is exactly an fp32 exponent
    bits[0] = 1 << 22  # 2^-127 is an fp32 subnormal: mantissa bit 22 set, exponent field 0
    bits[255] = 0x7FC00000  # NaN
    return bits.view(torch.float32).to(device)


def e4m3_to_fp32_div256(b: torch.Tensor) -> torch.Tensor:
    """e4m3 values as fp32, divided by 2^8 (exact; NaN bytes are not expected in weights).

    The byte shifted left by 7 inside an int16 is an fp16 number with the same sign, mantissa
    and exponent (bias 15 instead of 7, subnormals included): sign-extending the byte and
    clearing bit 14 puts the sign in bit 15. fp16 -> fp32 is a fast vectorized cast, where
    torch's own float8 cast runs element by element on CPUs. The bit steps run in place: a
    fresh buffer per step costs page faults on every call.
    """
    bits = b.view(torch.int8).to(torch.int16)
    bits.bitwise_left_shift_(7).bitwise_and_(~0x4000)
    return bits.view(torch.float16).float()


def fp32_to_e8m0(x: torch.Tensor) -> torch.Tensor:
    """Exact powers of two (fp32, 2^-127..2^127) to `float8_e8m0fnu`; anything else raises."""
    mant, exp = torch.frexp(x.float())  # x = mant * 2^exp with mant in [0.5, 1)
    if not bool(((mant == 0.5) & (exp >= -126) & (exp <= 128)).all()):
        raise ValueError("fp32_to_e8m0: every value must be a power of two in [2^-127, 2^127]")
    return (exp + 126).to(torch.uint8).view(torch.float8_e8m0fnu)


def pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= x for positive normal fp32 x, from the IEEE bits.

    Exponent - 127, plus one when the mantissa is non-zero (REF's `log2_ceil`); a subnormal
    x gives 2^-126. Adding an all-ones mantissa carries into the exponent exactly when the
    mantissa is non-zero; clearing the mantissa then leaves the power, clamped to
    2^-126..2^127 (three ops: this runs on every activation quantization).
    """
    bits = x.float().contiguous().view(torch.int32) + 0x7FFFFF
    bits.bitwise_and_(~0x7FFFFF).clamp_(0x00800000, 0x7F000000)
    return bits.view(torch.float32)


def e2m1_round(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 to the nearest e2m1 value (ties to even code), saturating at ±6; the values
    of `e2m1_decode(e2m1_encode(x))` (NaN excepted: it stays NaN), in a handful of ops.

    The e2m1 grid has spacing 0.5 below 2, then 1 in [2, 4) and 2 in [4, 6]: half the
    power of two at or below |x|, at least 0.5. x / spacing (exact) rounded half to even,
    times the spacing, is the nearest grid value, and the even integer of a tie is the even
    code (its mantissa bit is clear). The sign, -0.0 included, carries through.
    """
    x = x.float().clamp(-FP4_MAX, FP4_MAX)
    floor_pow2 = (x.view(torch.int32) & 0x7F800000).view(torch.float32)  # 2^⌊log2|x|⌋, or 0
    spacing = floor_pow2.mul_(0.5).clamp_min_(0.5)
    return (x / spacing).round_().mul_(spacing)


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> uint8 e2m1 codes 0..15 (nearest, ties to even, saturating; sign in bit 3)."""
    x = x.float()
    a = x.abs()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for t in _TIE_DOWN:
        code += (a > t).to(torch.uint8)
    for t in _TIE_UP:
        code += (a >= t).to(torch.uint8)
    sign = torch.signbit(x).to(torch.uint8) << 3
    return code | sign


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """uint8 e2m1 codes 0..15 -> fp32 values (code 8 is -0.0)."""
    table = _e2m1_table(codes.device)
    return table[(codes.to(torch.int64) & 0xF)]


def _e2m1_table(device: torch.device) -> torch.Tensor:
    mags = list(_E2M1_VALUES)
    return torch.tensor(mags + [-m for m in mags], dtype=torch.float32, device=device)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., n] -> int8 [..., n/2]; element 2j in the low nibble, 2j+1 in the high."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4: last dim {codes.shape[-1]} is odd")
    c = codes.to(torch.uint8) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).view(torch.int8)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [..., n/2] -> uint8 codes [..., n] (low nibble first)."""
    b = packed.view(torch.uint8)
    return torch.stack((b & 0xF, b >> 4), dim=-1).flatten(-2)


def _fp4_byte_table(device: torch.device) -> torch.Tensor:
    """[256, 2] fp32: the two values a packed byte holds, low nibble first."""
    b = torch.arange(256, dtype=torch.int64, device=device)
    table = _e2m1_table(device)
    return torch.stack((table[b & 0xF], table[b >> 4]), dim=-1)


def _pad_to(w: torch.Tensor, block: int) -> torch.Tensor:
    rows, cols = w.shape
    pr, pc = -rows % block, -cols % block
    return torch.nn.functional.pad(w, (0, pc, 0, pr)) if pr or pc else w


def quantize_fp8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [out, in] -> (float8_e4m3fn [out, in], float8_e8m0fnu [ceil(out/128), ceil(in/128)]).

    Each 128x128 block gets the smallest power-of-two scale with |w|/s <= 448 (at least
    2^-126, so all-zero blocks still have an encodable scale).
    """
    rows, cols = w.shape
    p = _pad_to(w.float(), FP8_BLOCK)
    nr, nc = p.shape[0] // FP8_BLOCK, p.shape[1] // FP8_BLOCK
    blocks = p.view(nr, FP8_BLOCK, nc, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = pow2_ceil((amax / FP8_MAX).clamp_min(_MIN_NORMAL))
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    q = q.view(p.shape)[:rows, :cols].to(torch.float8_e4m3fn)
    return q, fp32_to_e8m0(scale)


def dequantize_fp8_weight(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn [out, in] with e8m0 [ceil(out/128), ceil(in/128)] block scales -> fp32."""
    rows, cols = w.shape
    scale = e8m0_to_fp32(s)
    scale = scale.repeat_interleave(FP8_BLOCK, 0)[:rows].repeat_interleave(FP8_BLOCK, 1)[:, :cols]
    return w.float() * scale


def quantize_fp4_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [out, in] -> (int8 [out, in/2], float8_e8m0fnu [out, in/32]).

    One power-of-two scale per 32 inputs, the smallest with |w|/s <= 6 (REF's FP4 rule);
    values round to the nearest e2m1 (ties to even).
    """
    rows, cols = w.shape
    if cols % FP4_BLOCK:
        raise ValueError(f"quantize_fp4_weight: in-features {cols} not a multiple of 32")
    blocks = w.float().view(rows, cols // FP4_BLOCK, FP4_BLOCK)
    amax = blocks.abs().amax(dim=-1)
    scale = pow2_ceil((amax / FP4_MAX).clamp_min(_MIN_NORMAL))
    codes = e2m1_encode(blocks / scale[..., None]).view(rows, cols)
    return pack_fp4(codes), fp32_to_e8m0(scale)


def dequantize_fp4_weight(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """int8 [out, in/2] with e8m0 [out, in/32] scales -> fp32 [out, in]."""
    rows, half = w.shape
    values = _fp4_byte_table(w.device)[w.view(torch.uint8).to(torch.int64)].view(rows, 2 * half)
    scale = e8m0_to_fp32(s).repeat_interleave(FP4_BLOCK, dim=-1)
    return values * scale
