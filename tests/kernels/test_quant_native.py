"""The C round trips and Hadamard + FP4 step (`kernels/quant_native.py`) against the torch
references.

The quantization is elementwise IEEE arithmetic on power-of-two scales, so the C results must
equal the references bit for bit (compared as integers: signed zeros count). The Hadamard
sums run as butterflies where the reference multiplies by the ±1 matrix, so there the fp32
sums can differ in their last bits (see the tolerances below). Each case also runs the
portable scalar build (`-mno-avx512f`), which covers machines without AVX-512.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from dsv4.engine import sparse_indexer
from dsv4.engine.numerics import Numerics
from dsv4.kernels import quant, quant_native
from dsv4.kernels.quant import (
    act_quant_dequant_ref,
    act_quant_values_ref,
    fp4_act_quant_dequant_ref,
)

from .conftest import native_build

DTYPES = (torch.bfloat16, torch.float32)
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_GRID = torch.cat((-E2M1.flip(0)[:-1], E2M1))  # the 15 values, ascending


@pytest.fixture(scope="module", params=["native", "portable"])
def lib(request, tmp_path_factory) -> ctypes.CDLL:
    return native_build(request, tmp_path_factory, "quant")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    differ = _bits(got) != _bits(want)
    assert not differ.any(), (int(differ.sum()), got[differ][:4], want[differ][:4])


def _edge_rows(n: int, block: int, fp4: bool, seed: int) -> torch.Tensor:
    """Rows of width n covering the edge cases, one kind per block: normal values over many
    binades, zeros, blocks under the amax floor, huge values, amax at ±448·2^k or 6·2^k and
    one fp32 ulp either side (where the scale steps), and exact grid ties."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randn(n, generator=g) * torch.logspace(-30, 30, n)]
    rows.append(torch.randn(n, generator=g))
    x = torch.randn(n, generator=g)
    x[:block] = 0.0  # an all-zero block
    x[block : 2 * block] *= 1e-7  # under the FP8 amax floor 1e-4
    rows.append(x)
    rows.append(torch.randn(n, generator=g) * 1e-39)  # subnormal, under the FP4 floor 6·2^-126
    rows.append(torch.randn(n, generator=g) * 3e35)
    top = 6.0 if fp4 else 448.0
    for k in (-3, 0, 5):
        edge = torch.tensor(top * 2.0**k)
        for step in (-1, 0, 1):  # amax just under, at and just over top·2^k
            x = torch.randn(n, generator=g) * (edge / 8)
            amax = torch.nextafter(edge, edge * step * 2) if step else edge
            x.view(-1, block)[:, 0] = amax * (-1) ** k
            rows.append(x)
    rows.append(_ties(n, block, fp4))
    return torch.stack(rows)


def _ties(n: int, block: int, fp4: bool) -> torch.Tensor:
    """Per block amax = max so that s = 1, then values halfway between grid neighbours."""
    if fp4:
        mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    else:  # e4m3: a subnormal, low normal and high binade midpoints
        mids = torch.tensor([0.5, 1.5, 2.5, 9.5, 17.5]) * 2.0**-9
        mids = torch.cat((mids, torch.tensor([1.0625, 1.1875, 3.375, 240.0, 416.0])))
    mids = torch.cat((mids, -mids))
    x = mids.repeat(-(-n // mids.numel()))[:n].clone()
    x.view(-1, block)[:, -1] = 6.0 if fp4 else 448.0
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, block", [(512, 64), (256, 128), (96, 96), (48, 16), (40, 8)])
def test_fp8_round_trip_is_the_reference_bit_for_bit(lib, dtype, n, block):
    for seed in range(3):
        x = _edge_rows(n, block, False, seed).to(dtype)
        _same_bits(quant_native.act_quant_values(lib, x, block), act_quant_values_ref(x, block))
        _same_bits(quant_native.act_quant_dequant(lib, x, block), act_quant_dequant_ref(x, block))
        one = x[3:4]  # one row (decode)
        _same_bits(quant_native.act_quant_dequant(lib, one, block),
                   act_quant_dequant_ref(one, block))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, block", [(128, 32), (96, 32), (64, 64), (40, 8)])
def test_fp4_round_trip_is_the_reference_bit_for_bit(lib, dtype, n, block):
    for seed in range(3):
        x = _edge_rows(n, block, True, seed).to(dtype)
        _same_bits(quant_native.fp4_act_quant_dequant(lib, x, block),
                   fp4_act_quant_dequant_ref(x, block))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_tensors_match_the_torch_path_of_the_reference(lib, dtype):
    """Over 2^14 elements the references run their torch path (prefill sizes)."""
    x = (torch.randn(40, 3, 512) * torch.logspace(-6, 6, 512)).to(dtype)
    _same_bits(quant_native.act_quant_values(lib, x, 128), act_quant_values_ref(x, 128))
    _same_bits(quant_native.act_quant_dequant(lib, x, 64), act_quant_dequant_ref(x, 64))
    _same_bits(quant_native.fp4_act_quant_dequant(lib, x, 32), fp4_act_quant_dequant_ref(x, 32))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the numpy reference
def test_infinite_input_gives_the_reference_value(lib):
    """amax = inf: the scale clamps to 2^127, whose reciprocal is an fp32 subnormal."""
    x = torch.randn(2, 64)
    x[0, 5], x[1, 7] = float("inf"), -float("inf")
    _same_bits(quant_native.act_quant_values(lib, x, 64), act_quant_values_ref(x, 64))
    _same_bits(quant_native.fp4_act_quant_dequant(lib, x, 32), fp4_act_quant_dequant_ref(x, 32))


def test_column_slices_and_other_layouts(lib):
    """The KV nope dims are a column slice [S, :448] of [S, 512]: read in place with its row
    stride; layouts whose rows do not collapse are copied first."""
    kv = torch.randn(9, 512).bfloat16()
    nope = kv[:, :448]
    _same_bits(quant_native.act_quant_dequant(lib, nope, 64), act_quant_dequant_ref(nope, 64))
    odd = torch.randn(4, 5, 128).transpose(0, 1)[:, :3]  # [5, 3, 128], rows not uniform
    _same_bits(quant_native.act_quant_values(lib, odd, 128), act_quant_values_ref(odd, 128))
    empty = torch.zeros(0, 128)
    assert quant_native.act_quant_values(lib, empty, 128).shape == (0, 128)


def test_rejects_what_it_does_not_take(lib):
    with pytest.raises(quant_native.NativeArgumentError, match="multiple of the block"):
        quant_native.act_quant_values(lib, torch.zeros(2, 100), 64)
    with pytest.raises(quant_native.NativeArgumentError, match="fp32 or bf16"):
        quant_native.fp4_act_quant_dequant(lib, torch.zeros(2, 64, dtype=torch.float16), 32)
    with pytest.raises(quant_native.NativeArgumentError, match="power-of-two"):
        quant_native.hadamard_fp4(lib, torch.zeros(2, 96), fp4=False)


# --- Hadamard + FP4 -------------------------------------------------------------------


def _rotate_ref(x: torch.Tensor, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setenv("DSV4_KERNELS", "torch")
        return sparse_indexer.rotate(x)


def _simulate_ref(x: torch.Tensor, monkeypatch) -> torch.Tensor:
    return fp4_act_quant_dequant_ref(_rotate_ref(x, monkeypatch), 32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 16, 128), (1, 128), (33, 128), (3, 64), (5, 8), (2, 256)])
def test_hadamard_with_exact_sums_is_the_reference_bit_for_bit(lib, dtype, shape, monkeypatch):
    """Small integers times a power of two: every ±1 sum is exact in fp32 whatever the order,
    so the scale, the cast and the FP4 step must give the reference's bits."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randint(-64, 65, shape, generator=g).float() * 2.0**-5).to(dtype)
    _same_bits(quant_native.hadamard_fp4(lib, x, fp4=False), _rotate_ref(x, monkeypatch))
    if shape[-1] % 32 == 0:
        _same_bits(quant_native.hadamard_fp4(lib, x, fp4=True), _simulate_ref(x, monkeypatch))


def test_fp32_rotation_is_within_the_sums_rounding(lib, monkeypatch):
    """Both sides sum the same ±x_j in fp32 in different orders: each sum is within a few
    ulps of Σ|x_j| (butterflies: log2 n = 7 roundings; the matmul's order: up to n)."""
    x = torch.randn(256, 16, 128)
    got, want = quant_native.hadamard_fp4(lib, x, fp4=False), _rotate_ref(x, monkeypatch)
    bound = x.abs().sum(-1, keepdim=True) * 128**-0.5 * 2.0**-24 * 32
    assert ((got - want).abs() <= bound).all()
    assert (got != want).any()  # the orders do differ: this is not a vacuous comparison


def _grid_steps(got: torch.Tensor, want: torch.Tensor, rotated: torch.Tensor) -> torch.Tensor:
    """|index difference| on the e2m1 grid of each element, in units of the reference's block
    scale s = pow2_ceil(amax / 6) (`rotated`: the reference's input to the FP4 step)."""
    blocks = rotated.float().reshape(-1, 32)
    amax = blocks.abs().amax(-1, keepdim=True).clamp_min(6 * 2.0**-126)
    s = 2.0 ** torch.ceil(torch.log2(amax / 6))
    idx = [torch.searchsorted(E2M1_GRID, (t.float().reshape(-1, 32) / s).contiguous())
           for t in (got, want)]  # fmt: skip
    return (idx[0] - idx[1]).abs()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotation_then_fp4_matches_on_random_inputs(lib, dtype, monkeypatch):
    """Random prefill-sized q: the fast transform's fp32 sums differ from the matmul's in the
    last bits, which changes the result only where the cast to bf16 or the FP4 rounding sits
    on a tie. Measured on 8M gaussian elements: bf16 rotation 1 element in 10^7 one bf16 ulp
    apart; the FP4 step 0 (bf16) and 2 in 8·10^6 (fp32) elements apart, each by one grid step
    (the flipped element never moved its block's scale). The bounds leave a wide margin."""
    x = torch.randn(256, 16, 128).to(dtype)
    got, want = quant_native.hadamard_fp4(lib, x, fp4=True), _simulate_ref(x, monkeypatch)
    differ = _bits(got) != _bits(want)
    assert differ.float().mean() <= 1e-3
    assert (_grid_steps(got, want, _rotate_ref(x, monkeypatch)) <= 1).all()
    if dtype == torch.bfloat16:
        rot, ref = quant_native.hadamard_fp4(lib, x, fp4=False), _rotate_ref(x, monkeypatch)
        apart = (_bits(rot).int() - _bits(ref).int()).abs()
        assert (apart <= 1).all() and (apart > 0).float().mean() <= 1e-4


# --- dispatch ---------------------------------------------------------------------------


def _count_calls(monkeypatch) -> dict[str, int]:
    calls: dict[str, int] = {}
    names = ("act_quant_values", "act_quant_dequant", "fp4_act_quant_dequant", "hadamard_fp4")
    for name in names:

        def counted(*args, _f=getattr(quant_native, name), _n=name, **kw):
            calls[_n] = calls.get(_n, 0) + 1
            return _f(*args, **kw)

        monkeypatch.setattr(quant_native, name, counted)
    return calls


def _dispatch_all(x: torch.Tensor) -> list[torch.Tensor]:
    nx = Numerics(quant_sim=True)
    return [quant.act_quant_values(x, 128), quant.act_quant_dequant(x, 64),
            quant.fp4_act_quant_dequant(x, 32), sparse_indexer.rotate(x),
            sparse_indexer.Indexer._simulate(None, x, nx)]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_dispatchers_take_the_native_path_on_cpu_and_torch_when_asked(dtype, monkeypatch):
    x = (torch.randint(-64, 65, (2, 16, 128)).float() * 0.25).to(dtype)  # exact Hadamard sums
    calls = _count_calls(monkeypatch)
    monkeypatch.setenv("DSV4_KERNELS", "auto")
    auto = _dispatch_all(x)
    assert calls == {"act_quant_values": 1, "act_quant_dequant": 1, "fp4_act_quant_dequant": 1,
                     "hadamard_fp4": 2}  # fmt: skip
    calls.clear()
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    ref = _dispatch_all(x)
    assert calls == {}
    for got, want in zip(auto, ref, strict=True):
        _same_bits(got, want)


def test_unsupported_dtype_falls_back_to_the_reference(monkeypatch):
    calls = _count_calls(monkeypatch)
    monkeypatch.setenv("DSV4_KERNELS", "auto")
    x = torch.randn(2, 128).half()
    assert quant.act_quant_dequant(x, 64).dtype == torch.float16
    assert sparse_indexer.rotate(x).dtype == torch.float16
    assert calls == {}
