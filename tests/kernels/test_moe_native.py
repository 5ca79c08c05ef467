"""moe_native (csrc/moe.c) vs moe_ref: routed FP4 experts on the CPU in one C call.

Tolerances. The kernel multiplies the same exact weight values (FP4 times a power of two)
with the same activation values in fp32, so only the order of the fp32 sums differs:
* fp32 activations, no quant_sim: nothing is rounded but the sums; relative L2 and the
  largest error (relative to the output's largest magnitude) <= 1e-5 (seen: ~2e-6).
* bf16 activations, no quant_sim: the SwiGLU output is cast to bf16 before w2, so an
  order-level difference can flip one element by one bf16 ulp (2^-8 relative), which moves
  each output by 2^-8 of one of its I product terms: relative L2 <= 1e-5, largest error
  <= 1e-4 (seen: ~1e-6).
* quant_sim: w1/w3 outputs and w2 outputs are rounded to the act dtype and w2's input goes
  through the FP8 round trip, where a flip is one e4m3 step (2^-3 relative) of one element:
  relative L2 <= 2e-3 (the Triton twin's bound), and at most 1% of the outputs more than
  one bf16 ulp off (seen: none).
The AMX path (impl "best" on CPUs with tiles) multiplies the same bf16-valued operands exactly
and sums in fp32, so the same bounds hold for it. silu's exp is the kernel's own (correctly
rounded but for rare ties), torch's vector exp differs by an ulp in a few % of elements: far
inside these bounds.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess

import pytest
import torch

import dsv4.kernels.moe as moe_module
from dsv4.kernels import native
from dsv4.kernels.formats import quantize_fp4_weight
from dsv4.kernels.moe import moe, moe_ref
from dsv4.kernels.moe_native import MoEKernelError, available_impls, moe_native, native_supported

from .conftest import rel_l2


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    if native.compiler() is None:
        pytest.skip("no C compiler")
    return native.load("moe")


@pytest.fixture(params=["best", "no_amx"])
def impl(request, lib) -> str:
    """The AMX path ("best", where the CPU lends tiles) and the FMA GEMMs ("no_amx")."""
    if request.param not in available_impls(lib):
        pytest.skip("no AMX tiles here: 'best' runs the FMA GEMMs of 'no_amx'")
    return request.param


def _experts(e: int, rows: int, cols: int, scale: float):
    ws = [quantize_fp4_weight(torch.randn(rows, cols) * scale) for _ in range(e)]
    return torch.stack([w for w, _ in ws]), torch.stack([s for _, s in ws])


def _case(t, d, i, e, k, dtype, scale=0.2, ids=None):
    """Operands; token 0 lists expert 0 twice when k > 1 (REF adds both copies)."""
    x = (torch.randn(t, d) * 2).to(dtype)
    if ids is None:
        ids = torch.randint(0, e, (t, k))
        if k > 1 and t > 0:
            ids[0, :2] = 0
    weights = torch.rand(ids.shape)
    w1, w1_s = _experts(e, i, d, scale)
    w3, w3_s = _experts(e, i, d, scale)
    w2, w2_s = _experts(e, d, i, scale)
    return x, ids, weights, w1, w1_s, w3, w3_s, w2, w2_s


def _ulp_bf16(r: torch.Tensor) -> torch.Tensor:
    """The bf16 spacing at |r| (2^(exponent - 7))."""
    return torch.pow(2.0, torch.floor(torch.log2(r.abs().clamp_min(2.0**-100))) - 7)


def _assert_matches(out: torch.Tensor, ref: torch.Tensor, dtype, quant_sim: bool) -> None:
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = (out - ref).abs()
    peak = ref.abs().max().clamp_min(1e-30)
    if quant_sim:
        assert rel_l2(out, ref) <= 2e-3
        assert (err > _ulp_bf16(ref)).float().mean().item() <= 0.01
    else:
        assert rel_l2(out, ref) <= 1e-5
        assert (err.max() / peak).item() <= (1e-5 if dtype == torch.float32 else 1e-4)


# (T, D, I, E, k): decode, irregular sizes (D, I multiples of 32 only), enough pairs per
# expert for the wide GEMM and the AMX path (8+ pairs; the tiles' 16-row tails), prefill.
_SHAPES = [(1, 512, 128, 16, 4), (7, 160, 96, 5, 3), (70, 256, 128, 3, 2), (45, 160, 96, 3, 2),
           (64, 512, 128, 16, 4), (256, 512, 128, 16, 4)]  # fmt: skip


# quant_sim needs D and I multiples of the 128-wide activation blocks (the reference too)
_CASES = [(shape, sim) for shape in _SHAPES for sim in (False, True)
          if not sim or (shape[1] % 128 == 0 and shape[2] % 128 == 0)]  # fmt: skip


@pytest.mark.parametrize("shape, quant_sim", _CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matches_reference(lib, impl, shape, dtype, quant_sim):
    t, d, i, e, k = shape
    args = _case(t, d, i, e, k, dtype)
    _assert_matches(moe_native(lib, *args, 1.0, quant_sim, impl), moe_ref(*args, 1.0, quant_sim),
                    dtype, quant_sim)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("limit", [0.0, 10.0])
def test_large_values_and_limits(lib, impl, dtype, limit):
    # Larger weights: w1/w3 outputs reach ~30, so limit 10 clamps and 0 (no clamp) does not.
    args = _case(19, 128, 256, 5, 3, dtype, scale=0.5)
    for quant_sim in (False, True):
        out = moe_native(lib, *args, limit, quant_sim, impl)
        _assert_matches(out, moe_ref(*args, limit, quant_sim), dtype, quant_sim)


@pytest.mark.parametrize("t", [7, 8, 17, 131, 147, 150, 301])
def test_one_expert_takes_every_pair(lib, impl, t):
    # FMA GEMMs: groups of 64 pairs and tails of 19, 22 or 3 (two and one 16-pair tiles,
    # padded 8-row tiles, single rows). AMX: below and at its threshold of 8 pairs, blocks of
    # 32 rows with a 16-row tail, and 301 pairs in two passes (151 and 150).
    ids = torch.full((t, 1), 2, dtype=torch.int64)
    args = _case(t, 128, 128, 4, 1, torch.bfloat16, ids=ids)
    for quant_sim in (False, True):
        out = moe_native(lib, *args, 1.0, quant_sim, impl)
        _assert_matches(out, moe_ref(*args, 1.0, quant_sim), torch.bfloat16, quant_sim)


def test_amx_runs_where_operands_are_bf16_values(lib):
    # Prefill groups (~64 pairs per expert). bf16 activations: the AMX path sums in another
    # order than the FMA GEMMs, so some fp32 outputs differ in their last bits (proof that it
    # ran), both within the bounds. fp32 activations without quant_sim are not bf16 values:
    # the FMA GEMMs run for "best" too, bit for bit.
    if "best" not in available_impls(lib):
        pytest.skip("no AMX tiles here")
    args = _case(256, 512, 128, 16, 4, torch.bfloat16)
    amx, fma = (moe_native(lib, *args, 1.0, False, impl) for impl in ("best", "no_amx"))
    assert not torch.equal(amx, fma)
    _assert_matches(amx, fma, torch.bfloat16, False)
    x32 = args[0].float() + torch.randn(args[0].shape) * 1e-3  # not bf16 values
    args = (x32, *args[1:])
    assert torch.equal(moe_native(lib, *args, 1.0, False, "best"),
                       moe_native(lib, *args, 1.0, False, "no_amx"))  # fmt: skip


@pytest.mark.parametrize("t", [4, 40])  # 40: groups of 8+ pairs, on AMX tiles ("best")
def test_duplicates_and_zero_weights(lib, impl, t):
    x, ids, weights, *experts = _case(t, 128, 128, 3, 2, torch.bfloat16)
    ids[1] = torch.tensor([2, 2])
    weights[3] = 0.0  # a row with all routing weights zero: exactly zero output
    out = moe_native(lib, x, ids, weights, *experts, 1.0, False, impl)
    _assert_matches(out, moe_ref(x, ids, weights, *experts, 1.0, False), torch.bfloat16, False)
    assert torch.equal(out[3], torch.zeros(128))
    x, ids, weights, *experts = _case(4, 128, 128, 3, 2, torch.float32)
    ids[1] = torch.tensor([2, 2])
    # Row 1 routed twice to expert 2 is twice row 1 routed once with the same weight.
    once = moe_native(lib, x[1:2], ids[1:2, :1], weights[1:2, :1].clone().fill_(0.5),
                      *experts, 1.0, False)  # fmt: skip
    twice = moe_native(lib, x[1:2], ids[1:2], torch.full((1, 2), 0.5), *experts, 1.0, False)
    torch.testing.assert_close(twice, 2 * once, rtol=1e-6, atol=0)


def test_empty_batch_and_uint8_operands(lib):
    x, ids, weights, w1, w1_s, w3, w3_s, w2, w2_s = _case(3, 128, 128, 2, 2, torch.bfloat16)
    empty = moe_native(lib, x[:0], ids[:0], weights[:0], w1, w1_s, w3, w3_s, w2, w2_s, 1.0, True)
    assert empty.shape == (0, 128)
    experts = (w1, w1_s, w3, w3_s, w2, w2_s)
    as_u8 = [w.view(torch.uint8) for w in experts]
    out = moe_native(lib, x, ids, weights, *as_u8, 1.0, True)
    assert torch.equal(out, moe_native(lib, x, ids, weights, *experts, 1.0, True))


def test_bad_operands_raise(lib):
    x, ids, weights, w1, w1_s, w3, w3_s, w2, w2_s = _case(3, 128, 128, 2, 2, torch.float32)
    experts = (w1, w1_s, w3, w3_s, w2, w2_s)
    with pytest.raises(IndexError, match="outside"):
        moe_native(lib, x, torch.tensor([[0, 2]] * 3), weights, *experts, 1.0, False)
    with pytest.raises(MoEKernelError, match="w2"):
        moe_native(lib, x, ids, weights, w1, w1_s, w3, w3_s, w2[:, :64], w2_s, 1.0, False)
    with pytest.raises(MoEKernelError, match="w1 "):
        strided = w1.transpose(1, 2).contiguous().transpose(1, 2)
        moe_native(lib, x, ids, weights, strided, w1_s, w3, w3_s, w2, w2_s, 1.0, False)
    with pytest.raises(MoEKernelError, match="unsupported"):
        moe_native(lib, x, ids.int(), weights, *experts, 1.0, False)


def test_dispatcher_takes_native_path_on_cpu(monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C compiler")
    calls = []

    def counting(*a, **kw):
        calls.append(1)
        return moe_native(*a, **kw)

    monkeypatch.setattr(moe_module, "moe_native", counting)
    args = _case(5, 128, 128, 3, 2, torch.bfloat16)
    monkeypatch.delenv("DSV4_KERNELS", raising=False)
    out = moe(*args, 1.0, True)
    assert len(calls) == 1
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    ref = moe(*args, 1.0, True)
    assert len(calls) == 1  # the reference ran
    assert torch.equal(ref, moe_ref(*args, 1.0, True))
    _assert_matches(out, ref, torch.bfloat16, True)
    # Operands the kernel does not take (scales already decoded to fp32) go to the reference.
    monkeypatch.delenv("DSV4_KERNELS")
    x, ids, wts, w1, w1_s, w3, w3_s, w2, w2_s = args
    f32 = [s.view(torch.uint8).float() for s in (w1_s, w3_s, w2_s)]
    assert not native_supported(x, ids, wts, w1, f32[0], w3, f32[1], w2, f32[2], True)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 flags")
def test_portable_build_matches_reference(tmp_path):
    # The scalar fallback (no AVX-512), built for baseline x86-64: what other CPUs run.
    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f if f != "-march=native" else "-march=x86-64" for f in native._FLAGS]
    src, so = native._SRC / "moe.c", tmp_path / "moe_portable.so"
    subprocess.run([cc, *flags, "-I", str(native._SRC), "-o", str(so), str(src), "-lm"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    portable = ctypes.CDLL(str(so))
    for shape, dtype, quant_sim in [((70, 256, 128, 3, 2), torch.float32, False),
                                    ((5, 128, 128, 4, 3), torch.bfloat16, True)]:  # fmt: skip
        args = _case(*shape, dtype)
        out = moe_native(portable, *args, 1.0, quant_sim)
        _assert_matches(out, moe_ref(*args, 1.0, quant_sim), dtype, quant_sim)
