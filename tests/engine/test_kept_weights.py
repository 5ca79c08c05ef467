"""Weights kept in their computing form at load (dense FP8 weights, stacked GEMMs) and the
one-token shortcuts change only the speed: logits equal bit for bit with and without them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsv4.engine import load_model
from dsv4.engine.attention import _window, _window_step
from dsv4.engine.state import LayerState
from dsv4.engine.weights import FP8Linear

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden" / "checkpoint"


def _drop_kept(model) -> int:
    """Remove every kept dense FP8 weight and stacked GEMM (the per-call dequantizing paths
    then run); returns how many linears kept one."""
    dropped, seen = 0, set()

    def visit(obj) -> None:
        nonlocal dropped
        if id(obj) in seen or not hasattr(obj, "__dataclass_fields__"):
            return
        seen.add(id(obj))
        if isinstance(obj, FP8Linear):
            dropped += obj.dense is not None
            obj.dense = None
            return
        for name in obj.__dataclass_fields__:
            value = getattr(obj, name)
            if name in ("qkv_a", "w13"):
                setattr(obj, name, None)
            for item in value if isinstance(value, list) else [value]:
                visit(item)

    visit(model)
    return dropped


def _logits(model, ids: list[int]) -> list[torch.Tensor]:
    session = model.new_session()
    out = [session.prefill(ids[:40]), session.prefill(ids[40:57])]
    token = int(out[-1][-1].argmax())
    for _ in range(6):
        out.append(session.decode(token))
        token = int(out[-1].argmax())
    return out


@pytest.fixture
def torch_gemms(monkeypatch):
    """The torch GEMM paths these tests compare (the C kernels would take the GEMMs over, and
    the AMX one makes the dense copies unnecessary), with the dense FP8 copies kept."""
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    monkeypatch.setenv("DSV4_CPU_DENSE_FP8", "1")


@pytest.mark.parametrize("dtype, sim", [(torch.bfloat16, True), (torch.float32, False)])
def test_kept_weights_give_identical_logits(golden_tokens, dtype, sim, torch_gemms):
    torch.set_num_threads(1)
    kept = load_model(GOLDEN, dtype=dtype, quant_sim=sim)
    plain = load_model(GOLDEN, dtype=dtype, quant_sim=sim)
    assert _drop_kept(plain) > 0
    for a, b in zip(_logits(kept, golden_tokens), _logits(plain, golden_tokens), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("start", [0, 1, 5, 15, 16, 17, 40])
def test_one_token_window_step_matches_the_chunk_path(start):
    g = torch.Generator().manual_seed(start)
    win, hd = 16, 8
    ring = torch.randn(win, hd, generator=g).bfloat16()
    kv = torch.randn(1, hd, generator=g).bfloat16()
    fast, general = LayerState(ring.clone()), LayerState(ring.clone())
    keys = _window_step(fast, kv, start, win)
    want_keys, want_idxs = _window(general, kv, start, win)
    seen = want_keys[want_idxs[0][want_idxs[0] >= 0]]  # the rows the query attends to
    assert keys.shape == seen.shape
    assert sorted(map(tuple, keys.tolist())) == sorted(map(tuple, seen.tolist()))
    assert torch.equal(fast.window, general.window)


def test_dense_weights_can_be_turned_off(golden_tokens, monkeypatch, torch_gemms):
    torch.set_num_threads(1)
    kept = load_model(GOLDEN, dtype=torch.bfloat16, quant_sim=True)
    monkeypatch.setenv("DSV4_CPU_DENSE_FP8", "0")
    lean = load_model(GOLDEN, dtype=torch.bfloat16, quant_sim=True)
    assert _drop_kept(lean) == 0  # nothing was kept
    for a, b in zip(_logits(kept, golden_tokens), _logits(lean, golden_tokens), strict=True):
        assert torch.equal(a, b)


def test_dense_copies_are_kept_only_without_amx(monkeypatch):
    from dsv4.engine import weights

    monkeypatch.delenv("DSV4_CPU_DENSE_FP8", raising=False)
    monkeypatch.setattr(weights, "amx_ready", lambda: True)
    assert not weights.keep_dense_on_cpu()
    monkeypatch.setattr(weights, "amx_ready", lambda: False)
    assert weights.keep_dense_on_cpu()
    monkeypatch.setenv("DSV4_CPU_DENSE_FP8", "0")
    assert not weights.keep_dense_on_cpu()
    monkeypatch.setenv("DSV4_CPU_DENSE_FP8", "1")
    monkeypatch.setattr(weights, "amx_ready", lambda: True)
    assert weights.keep_dense_on_cpu()


@pytest.mark.parametrize("rows, groups", [(1, 1), (1, 2), (40, 1)])
def test_wo_a_read_as_stored_fp8_matches_the_bf16_copy(rows, groups):
    from types import SimpleNamespace

    from dsv4.engine.attention import Attention
    from dsv4.kernels.formats import quantize_fp8_weight

    assert load_model(GOLDEN).layers[0].attn.wo_a_fp8 is not None  # kept on CPU
    g = torch.Generator().manual_seed(rows + groups)
    r, k = 256, 384  # per group: rank rows of wo_a, inputs
    w, s = quantize_fp8_weight(torch.randn(groups * r, k, generator=g) * 0.05)
    lin = FP8Linear(w, s)
    o = torch.randn(rows, groups * k, generator=g).bfloat16()
    got = Attention._project_out_stored(SimpleNamespace(wo_a_fp8=lin), o, groups, r)
    assert got is not None and got.dtype == torch.bfloat16
    plain = lin.dequantized().bfloat16().float().view(groups, r, k)  # the bf16 wo_a
    want = torch.einsum("sgk,grk->sgr", o.float().view(rows, groups, k), plain).flatten(1)
    # bf16 outputs of fp32 sums in another order: within one bf16 step
    torch.testing.assert_close(got.float(), want, rtol=2**-7, atol=1e-6)
