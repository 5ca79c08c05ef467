"""The C MoE gate (`kernels/route_native.py`) against `MoE.route`'s torch path."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine.moe import MoE
from dsv4.kernels import native, route_native


def _moe(hashed: bool, e: int = 16, d: int = 96, k: int = 4, vocab: int = 50) -> MoE:
    g = torch.Generator().manual_seed(e + d + k)
    gate = torch.randn(e, d, generator=g).bfloat16().float()  # bf16 values, as at load
    bias = None if hashed else torch.randn(e, generator=g) * 0.1
    tid2eid = torch.randint(0, e, (vocab, k), generator=g) if hashed else None
    return MoE(gate, bias, tid2eid, experts=None, shared=None, topk=k, route_scale=1.5,
               limit=10.0)  # fmt: skip


@pytest.mark.parametrize("hashed", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 4])
def test_route_matches_the_torch_path(monkeypatch, hashed, dtype, rows):
    moe = _moe(hashed)
    x = (torch.randn(rows, 96, generator=torch.Generator().manual_seed(rows)) * 2).to(dtype)
    ids = torch.tensor([3, 7, 49, 0])[:rows]
    got_idx, got_w = moe.route(x, ids)  # native: few rows on CPU
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    want_idx, want_w = moe.route(x, ids)
    assert torch.equal(got_idx, want_idx)
    # the gate's dot products sum in another order; softplus and sqrt are libm's
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got_w.sum(-1), torch.full((rows,), 1.5), rtol=1e-5)


def test_topk_takes_the_largest_first_and_the_lower_expert_on_ties():
    lib = native.load("route")
    gate = torch.zeros(6, 16)
    bias = torch.tensor([0.0, 3.0, 1.0, 3.0, 2.0, 0.5])  # equal scores: bias decides
    idx, w = route_native.route(lib, torch.ones(1, 16), gate, bias, None, torch.zeros(1), 3, 1.0)
    assert idx.tolist() == [[1, 3, 4]]
    assert torch.allclose(w, torch.full((1, 3), 1 / 3))


def test_bad_hash_ids_are_reported():
    lib = native.load("route")
    tid2eid = torch.tensor([[0, 1], [1, 9]])  # expert 9 of 4 does not exist
    with pytest.raises(IndexError, match="out of range"):
        route_native.route(lib, torch.ones(1, 8), torch.zeros(4, 8), None, tid2eid,
                           torch.tensor([1]), 2, 1.0)  # fmt: skip
    with pytest.raises(IndexError, match="out of range"):
        route_native.route(lib, torch.ones(1, 8), torch.zeros(4, 8), None, tid2eid,
                           torch.tensor([7]), 2, 1.0)  # fmt: skip
