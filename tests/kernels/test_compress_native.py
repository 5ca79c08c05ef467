"""The C compressor pooling (`kernels/compress_native.py`) against `Compressor._pool`'s torch
path: the same fp32 steps; the exps may differ by an ulp (torch's vector exp), so the pooled
values agree to a few fp32 ulps."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine.compressor import Compressor
from dsv4.kernels import compress_native, native


def _compressor(ratio: int, d: int) -> Compressor:
    coff = 2 if ratio == 4 else 1
    return Compressor(torch.zeros(2 * coff * d, 8).bfloat16(), torch.zeros(ratio, coff * d),
                      torch.ones(d), ratio, d, 1e-6)  # fmt: skip


@pytest.mark.parametrize("ratio, d, lo, n", [(4, 48, 0, 5), (4, 48, 4, 3), (4, 512, 8, 64),
                                             (128, 32, 0, 2), (128, 40, 128, 1)])  # fmt: skip
def test_pool_matches_the_torch_path(monkeypatch, ratio, d, lo, n):
    comp = _compressor(ratio, d)
    width = (2 if ratio == 4 else 1) * d
    g = torch.Generator().manual_seed(ratio + d + lo)
    rows = lo + n * ratio + 3
    kv = torch.randn(rows, width, generator=g)
    score = torch.randn(rows, width, generator=g) * 4
    got = comp._pool(kv, score, lo, n)
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    want = comp._pool(kv, score, lo, n)
    assert got.shape == (n, d) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if ratio == 4 and lo == 0:  # the first window pools its own rows only (padding before)
        own = comp._pool(kv, score, lo, 1)[0]
        p = torch.softmax(score[:4, d:], dim=0)
        torch.testing.assert_close(own, (kv[:4, d:] * p).sum(0), rtol=1e-5, atol=1e-6)


def test_pool_rejects_windows_outside_the_rows():
    lib = native.load("compress")
    kv = torch.zeros(8, 16)
    with pytest.raises(ValueError, match="outside"):
        compress_native.pool(lib, kv, kv, 4, 2, 4, 8, True)
    with pytest.raises(ValueError, match="fp32"):
        compress_native.pool(lib, kv.bfloat16(), kv, 0, 1, 4, 8, True)
