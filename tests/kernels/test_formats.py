"""Bit-exact tests of kernels/formats.py against the format definitions (SPEC §3.3, §6)."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from dsv4.kernels import formats as F

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
_REPO = Path(__file__).resolve().parents[2]


def golden_checkpoint() -> Path | None:
    for cand in (
        _REPO / "tests/data/golden/checkpoint",
        _REPO.parent / "shared/v4/golden/checkpoint",
    ):
        if (cand / "model.safetensors.index.json").is_file():
            return cand
    return None


# -- independent definitions (pure Python, exact rationals) ---------------------------------


def e4m3_values() -> list[Fraction]:
    """Every finite non-negative e4m3fn value: bias 7, 3 mantissa bits, 0x7F is NaN."""
    vals = []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue
            if e == 0:
                vals.append(Fraction(m, 8) * Fraction(2) ** -6)
            else:
                vals.append((1 + Fraction(m, 8)) * Fraction(2) ** (e - 7))
    return vals


def round_to_grid(x: float, grid: list[Fraction], even_of) -> float:
    """Nearest grid value by magnitude, ties to the one whose code `even_of` says is even."""
    a = Fraction(abs(x))
    best = min(range(len(grid)), key=lambda i: (abs(grid[i] - a), not even_of(i)))
    return math.copysign(float(grid[best]), x)


# -- ue8m0 ---------------------------------------------------------------------------------


def test_e8m0_decode_every_byte():
    b = torch.arange(256, dtype=torch.uint8)
    got = F.e8m0_to_fp32(b.view(torch.float8_e8m0fnu))
    for byte in range(255):
        assert got[byte].item() == 2.0 ** (byte - 127), byte
    assert math.isnan(got[255].item())
    assert torch.equal(F.e8m0_to_fp32(b[:255]), got[:255])  # uint8 input too


def test_e8m0_encode_round_trip():
    pows = torch.tensor([2.0**e for e in range(-127, 128)], dtype=torch.float32)
    enc = F.fp32_to_e8m0(pows)
    assert enc.dtype == torch.float8_e8m0fnu
    assert enc.view(torch.uint8).tolist() == list(range(255))
    assert torch.equal(F.e8m0_to_fp32(enc), pows)


def test_e8m0_encode_rejects_non_powers():
    with pytest.raises(ValueError, match="power of two"):
        F.fp32_to_e8m0(torch.tensor([3.0]))


def test_pow2_ceil_definition():
    xs = [1.0, 1.5, 2.0, 2.0000002, 3.0, 0.3, 1e-4 / 448, 447.0 / 448, 1e30, 2.0**-126]
    got = F.pow2_ceil(torch.tensor(xs, dtype=torch.float32))
    for x, g in zip(xs, got.tolist(), strict=True):
        x32 = torch.tensor(x, dtype=torch.float32).item()
        want = 2.0 ** math.ceil(math.log2(Fraction(x32)))
        assert g == want, (x, g, want)
    # a subnormal input gives the smallest normal power (REF's bit rule)
    assert F.pow2_ceil(torch.tensor([1e-40])).item() == 2.0**-126


# -- e4m3 ----------------------------------------------------------------------------------


def test_e4m3_cast_is_round_to_nearest_even():
    grid = e4m3_values()
    gen = torch.Generator().manual_seed(0)
    mags = torch.exp2(torch.rand(1000, generator=gen) * 20 - 12)  # 2^-12 .. 2^8: subnormals too
    signs = torch.where(torch.rand(1000, generator=gen) < 0.5, -1.0, 1.0)
    # exact midpoints between neighbouring values exercise the ties
    mids = torch.tensor([float((a + b) / 2) for a, b in itertools.pairwise(grid)])
    x = torch.cat([mags * signs, mids, -mids])
    got = x.to(torch.float8_e4m3fn).float()
    for xi, gi in zip(x.tolist(), got.tolist(), strict=True):
        assert gi == round_to_grid(xi, grid, lambda i: i % 2 == 0), xi


def test_e4m3_saturation_after_clamp():
    # callers clamp to ±448 first (REF); the cast then keeps the largest finite value
    x = torch.tensor([448.0, 449.0, 1e6, -1e6, 2.0**-10, 2.0**-9 * 1.5])
    got = x.clamp(-F.FP8_MAX, F.FP8_MAX).to(torch.float8_e4m3fn).float()
    assert got.tolist() == [448.0, 448.0, 448.0, -448.0, 0.0, 2.0**-8]  # 2^-10 ties to 0


def test_fp8_weight_saturates_and_is_exact_on_grid():
    w = torch.tensor([[448.0, -448.0, 0.0, 1.0]] * 2)
    q, s = F.quantize_fp8_weight(w)
    assert F.e8m0_to_fp32(s).item() == 1.0  # 448 / 448 is already a power of two
    assert torch.equal(F.dequantize_fp8_weight(q, s), w)


def test_fp8_weight_blocks_and_scales():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(300, 200, generator=gen) * torch.exp2(
        torch.randint(-8, 8, (300, 1), generator=gen)
    )
    q, s = F.quantize_fp8_weight(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (300, 200)
    assert s.dtype == torch.float8_e8m0fnu and s.shape == (3, 2)
    scale = F.e8m0_to_fp32(s)
    for bi, bj in itertools.product(range(3), range(2)):
        blk = w[bi * 128 : (bi + 1) * 128, bj * 128 : (bj + 1) * 128]
        want = 2.0 ** math.ceil(math.log2(blk.abs().max().item() / 448))
        assert scale[bi, bj].item() == want
    deq = F.dequantize_fp8_weight(q, s)
    full = scale.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    assert torch.equal(deq, (w / full).to(torch.float8_e4m3fn).float() * full)
    assert (deq - w).abs().max() <= (w.abs() * 2**-4).max()


# -- e2m1 ----------------------------------------------------------------------------------


def test_e2m1_every_code():
    codes = torch.arange(16, dtype=torch.uint8)
    vals = F.e2m1_decode(codes)
    assert vals[:8].tolist() == E2M1
    assert vals[8:].tolist() == [-v for v in E2M1]
    assert torch.signbit(vals[8]).item()  # code 8 is -0.0
    assert torch.equal(F.e2m1_encode(vals), codes)


def test_e2m1_round_ties_to_even_and_signs():
    grid = [Fraction(v) for v in E2M1]
    mids = [float((a + b) / 2) for a, b in itertools.pairwise(grid)]
    gen = torch.Generator().manual_seed(2)
    x = torch.cat(
        [torch.tensor(mids), -torch.tensor(mids), (torch.rand(3000, generator=gen) - 0.5) * 13]
    )
    got = F.e2m1_round(x)
    for xi, gi in zip(x.tolist(), got.tolist(), strict=True):
        if abs(xi) > 6:
            assert gi == math.copysign(6.0, xi)
        else:
            assert gi == round_to_grid(xi, grid, lambda i: i % 2 == 0), xi
    # the midpoints land on the even code: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4
    assert F.e2m1_round(torch.tensor(mids)).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert torch.signbit(F.e2m1_round(torch.tensor([-0.1]))).item()


def test_nibble_order():
    codes = torch.tensor([[1, 2, 3, 15]], dtype=torch.uint8)
    packed = F.pack_fp4(codes)
    assert packed.dtype == torch.int8
    assert packed.view(torch.uint8).tolist() == [[0x21, 0xF3]]  # low nibble = even element
    assert torch.equal(F.unpack_fp4(packed), codes)


def test_fp4_weight_round_trip():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(64, 96, generator=gen)
    q, s = F.quantize_fp4_weight(w)
    assert q.shape == (64, 48) and q.dtype == torch.int8
    assert s.shape == (64, 3) and s.dtype == torch.float8_e8m0fnu
    scale = F.e8m0_to_fp32(s)
    amax = w.view(64, 3, 32).abs().amax(-1)
    assert torch.equal(scale, torch.exp2(torch.ceil(torch.log2(amax / 6))))
    deq = F.dequantize_fp4_weight(q, s)
    full = scale.repeat_interleave(32, -1)
    assert torch.equal(deq, F.e2m1_round(w / full) * full)


def test_golden_expert_matches_per_element_decode():
    ckpt = golden_checkpoint()
    if ckpt is None:
        pytest.skip("golden checkpoint not available")
    from safetensors import safe_open

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    name = "layers.1.ffn.experts.3.w1"
    with safe_open(ckpt / index[name + ".weight"], "pt") as f:
        w = f.get_tensor(name + ".weight")
    with safe_open(ckpt / index[name + ".scale"], "pt") as f:
        s = f.get_tensor(name + ".scale")
    deq = F.dequantize_fp4_weight(w, s)
    raw = w.view(torch.uint8).tolist()
    sbytes = s.view(torch.uint8).tolist()
    for o in range(0, w.shape[0], 7):
        for k in range(2 * w.shape[1]):
            byte = raw[o][k // 2]
            code = byte & 0xF if k % 2 == 0 else byte >> 4
            mag = E2M1[code & 7] * 2.0 ** (sbytes[o][k // 32] - 127)
            assert deq[o, k].item() == (-mag if code & 8 else mag), (o, k)


def test_e2m1_round_equals_encode_then_decode_across_fp32():
    """The arithmetic rounding against the code table, on a sweep of every binade's bit
    patterns (subnormals, ±0, ±inf) and the neighbours of every grid point and midpoint."""
    bits = torch.arange(-(2**31), 2**31, 40961, dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    grid = torch.tensor([0.0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7])
    near = torch.cat((grid, torch.nextafter(grid, grid + 1), torch.nextafter(grid, grid - 1)))
    x = torch.cat((x[~x.isnan()], near, -near, torch.tensor([float("inf"), -float("inf")])))
    want = F.e2m1_decode(F.e2m1_encode(x))
    assert torch.equal(F.e2m1_round(x).view(torch.int32), want.view(torch.int32))
