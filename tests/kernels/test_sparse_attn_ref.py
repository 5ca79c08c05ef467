"""Sparse attention reference against a per-query softmax with the sink in the denominator."""

import pytest
import torch

from dsv4.kernels.sparse_attn import sparse_attn_ref


def _naive(q, kv, sink, idxs, scale):
    b_, m_, h_, d = q.shape
    out = torch.zeros(b_, m_, h_, d, dtype=torch.float64)
    for b in range(b_):
        for m in range(m_):
            keep = [int(i) for i in idxs[b, m] if i >= 0]
            if not keep:
                continue
            rows = kv[b, keep].double()
            for h in range(h_):
                s = rows @ q[b, m, h].double() * scale
                e = torch.exp(s - s.max())
                denom = e.sum() + torch.exp(sink[h].double() - s.max())
                out[b, m, h] = (e[:, None] * rows).sum(0) / denom
    return out


@pytest.mark.parametrize("unused_rows", [0, 40])  # dense path / gather path
def test_matches_naive_fp32(unused_rows):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 3, 16, generator=g)
    kv = torch.randn(2, 9 + unused_rows, 16, generator=g)
    sink = torch.randn(3, generator=g)
    idxs = torch.randint(-1, 9, (2, 5, 6), generator=g, dtype=torch.int32)
    idxs[0, 1] = -1  # a row with nothing to attend to gives zeros
    idxs[1, 2, :2] = 4  # repeated indices count twice, like REF's gather
    out = sparse_attn_ref(q, kv, sink, idxs, 0.25)
    torch.testing.assert_close(out.double(), _naive(q, kv, sink, idxs, 0.25), rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(out[0, 1]) == 0


def test_bf16_rounds_probabilities():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 2, 32, generator=g).bfloat16()
    kv = torch.randn(1, 7, 32, generator=g).bfloat16()
    sink = torch.zeros(2)
    idxs = torch.arange(7, dtype=torch.int32).expand(1, 4, 7).contiguous()
    out = sparse_attn_ref(q, kv, sink, idxs, 32**-0.5)
    assert out.dtype == torch.bfloat16
    want = _naive(q.float(), kv.float(), sink, idxs, 32**-0.5)
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)
