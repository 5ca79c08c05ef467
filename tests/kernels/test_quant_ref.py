"""The quantization references against a naive, element-by-element statement of REF's rules."""

import math

import pytest
import torch

from dsv4.kernels.quant import act_quant_dequant_ref, act_quant_ref, fp4_act_quant_dequant_ref

# Every finite e4m3 value, from its own bit patterns (0x7F / 0xFF are NaN).
_E4M3 = sorted(
    {
        v
        for v in torch.arange(256, dtype=torch.int32)
        .to(torch.uint8)
        .view(torch.float8_e4m3fn)
        .float()
        .tolist()
        if math.isfinite(v)
    }  # fmt: skip
)
_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _pow2_ceil(x: float) -> float:
    m, e = math.frexp(x)  # x = m * 2^e, m in [0.5, 1)
    return 2.0 ** (e - 1) if m == 0.5 else 2.0**e


def _nearest(v: float, grid: list[float], even_of) -> float:
    """Nearest grid magnitude to |v|, ties to the value whose code is even; sign kept."""
    a = abs(v)
    best = min(grid, key=lambda g: (abs(g - a), even_of(g)))
    return math.copysign(best, v)


def _e4m3_even(g: float) -> int:
    code = torch.tensor([g]).to(torch.float8_e4m3fn).view(torch.uint8).item()
    return code & 1


def _e2m1_even(g: float) -> int:
    return _E2M1.index(g) & 1


def _naive_fp8(row: list[float], block: int) -> tuple[list[float], list[float]]:
    q, scales = [], []
    for i in range(0, len(row), block):
        blk = row[i : i + block]
        amax = max(max(abs(v) for v in blk), 1e-4)
        inv448 = torch.tensor(1 / 448, dtype=torch.float32).item()
        s = _pow2_ceil(torch.tensor(amax * inv448, dtype=torch.float32).item())
        scales.append(s)
        q += [_nearest(max(-448.0, min(448.0, v / s)), _E4M3[len(_E4M3) // 2 :], _e4m3_even)
              for v in blk]  # fmt: skip
    return q, scales


def _sample(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-6, 3, shape[-1]).flip(0)
    x[0, :64] = 0.0  # an all-zero block exercises the amax floor
    x[1, 5] = 448.0 * 3  # a value that saturates
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_act_quant_bit_exact(dtype):
    x = _sample((3, 256), 0).to(dtype)
    q, s = act_quant_ref(x, 128)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (3, 2)
    for r in range(3):
        want_q, want_s = _naive_fp8(x[r].float().tolist(), 128)
        assert s[r].tolist() == want_s
        assert q[r].float().tolist() == want_q


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_act_quant_dequant_bit_exact(dtype):
    x = _sample((2, 192), 1).to(dtype)
    y = act_quant_dequant_ref(x, 64)
    assert y.dtype == dtype
    for r in range(2):
        q, scales = _naive_fp8(x[r].float().tolist(), 64)
        want = [v * scales[i // 64] for i, v in enumerate(q)]
        want = torch.tensor(want, dtype=torch.float32).to(dtype)
        assert torch.equal(y[r], want)


def test_fp4_act_quant_dequant_bit_exact():
    x = _sample((2, 128), 2)
    x[1, 32:64] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 4)  # the ties
    y = fp4_act_quant_dequant_ref(x, 32)
    for r in range(2):
        row = x[r].tolist()
        for i in range(0, 128, 32):
            blk = row[i : i + 32]
            s = _pow2_ceil(max(max(abs(v) for v in blk), 6 * 2.0**-126) / 6)
            want = [_nearest(max(-6.0, min(6.0, v / s)), _E2M1, _e2m1_even) * s for v in blk]
            assert y[r, i : i + 32].tolist() == want


def test_ties_go_to_even_codes():
    y = fp4_act_quant_dequant_ref(
        torch.tensor([[0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] + [6.0] * 25])
    )
    assert y[0, :7].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_block_must_divide():
    with pytest.raises(ValueError, match="multiple"):
        act_quant_ref(torch.zeros(2, 100))


def _wide_range_rows(seed: int) -> torch.Tensor:
    """Rows over many binades: normal, tiny (e4m3 subnormal results), huge, zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 256, generator=g)
    x[1] *= 1e-30
    x[2] *= 1e30
    x[3, :128] = 0.0
    x[4] = torch.randn(256, generator=g) * torch.logspace(-40, 30, 256)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [64, 128])
def test_act_quant_values_is_the_dequantized_act_quant(dtype, block, monkeypatch):
    """The numpy path (few rows), the torch path and act_quant + dequantization agree bit for
    bit."""
    from dsv4.kernels import quant

    for seed in range(5):
        x = _wide_range_rows(seed).to(dtype)
        q, s = act_quant_ref(x, block)
        want = (q.float().view(6, -1, block) * s.unsqueeze(-1)).view(6, 256)
        small = quant.act_quant_values_ref(x, block)  # 1,536 elements: the numpy path
        monkeypatch.setattr(quant, "_NUMPY_MAX", 0)
        large = quant.act_quant_values_ref(x, block)
        monkeypatch.undo()
        for got in (small, large):
            assert got.dtype == torch.float32
            assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp4_round_trip_numpy_and_torch_paths_agree(dtype, monkeypatch):
    from dsv4.kernels import quant

    for seed in range(5):
        x = _wide_range_rows(seed).to(dtype)
        x[5, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 4)  # the ties
        small = fp4_act_quant_dequant_ref(x, 32)  # the numpy path
        monkeypatch.setattr(quant, "_NUMPY_MAX", 0)
        large = fp4_act_quant_dequant_ref(x, 32)
        monkeypatch.undo()
        assert small.dtype == dtype and torch.equal(small, large)
        assert torch.equal(small.float().view(torch.int32), large.float().view(torch.int32))
