"""Weights in huge-page buffers (`engine/hugepages.py`): packing keeps every value, shape,
dtype and alias, and a packed model computes the same logits bit for bit."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from dsv4.engine import hugepages, load_model

from .conftest import GOLDEN

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")


@dataclass(frozen=True)
class _Leaf:
    w: torch.Tensor


@dataclass
class _Tree:
    a: torch.Tensor
    b: torch.Tensor
    shared: torch.Tensor
    also_shared: torch.Tensor
    view: torch.Tensor
    strided: torch.Tensor
    leaves: list = field(default_factory=list)
    name: str = "tree"


def _tree() -> tuple[_Tree, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(600_000, generator=g)  # 2.4 MB: the arena spans a huge page
    shared = torch.randn(7, 5, generator=g).bfloat16()
    base = torch.randn(10, 10, generator=g)
    tree = _Tree(big, torch.randint(-100, 100, (33,), dtype=torch.int8, generator=g), shared,
                 shared, base[2:5], torch.randn(6, 4, generator=g).T,
                 [_Leaf(torch.randn(3, 128, generator=g).to(torch.float8_e4m3fn))])  # fmt: skip
    return tree, base


@pytest.fixture
def huge_on(monkeypatch):
    monkeypatch.setenv("DSV4_HUGEPAGES", "1")
    hugepages._madvise.cache_clear()
    yield
    hugepages._madvise.cache_clear()


@linux_only
def test_pack_moves_small_tensors_into_one_buffer_keeping_values(huge_on):
    tree, _ = _tree()
    before = {k: getattr(tree, k).clone() for k in ("a", "b", "shared", "view", "strided")}
    leaf = tree.leaves[0].w.clone()
    view_ptr, strided_ptr = tree.view.data_ptr(), tree.strided.data_ptr()
    moved = hugepages.pack(tree)
    assert moved >= tree.a.numel() * 4
    for k, want in before.items():
        got = getattr(tree, k)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    assert torch.equal(tree.leaves[0].w.view(torch.uint8), leaf.view(torch.uint8))
    storage = tree.a.untyped_storage().data_ptr()
    for t in (tree.b, tree.shared, tree.leaves[0].w):  # frozen dataclasses too
        assert t.untyped_storage().data_ptr() == storage
        assert t.data_ptr() % 64 == 0
    assert tree.shared is tree.also_shared  # one tensor held twice stays one tensor
    assert tree.view.data_ptr() == view_ptr  # a view of a larger storage stays put
    assert tree.strided.data_ptr() == strided_ptr  # so does a non-contiguous tensor


@linux_only
def test_pack_skips_what_does_not_fill_a_huge_page(huge_on):
    small = _Tree(*(torch.ones(4) for _ in range(6)))
    assert hugepages.pack(small) == 0


@pytest.mark.parametrize("setting", ["0", None])  # off unless asked for
def test_switched_off_nothing_moves(monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv("DSV4_HUGEPAGES", raising=False)
    else:
        monkeypatch.setenv("DSV4_HUGEPAGES", setting)
    hugepages._madvise.cache_clear()
    try:
        tree, _ = _tree()
        ptr = tree.a.data_ptr()
        assert hugepages.pack(tree) == 0 and tree.a.data_ptr() == ptr
        assert not hugepages.advise(torch.empty(4 << 20, dtype=torch.uint8))
    finally:
        hugepages._madvise.cache_clear()


@linux_only
def test_empty_is_advised_where_the_kernel_offers_huge_pages(huge_on):
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not enabled.exists() or "[never]" in enabled.read_text():
        pytest.skip("transparent huge pages are off on this machine")
    assert hugepages.advise(hugepages.empty((8 << 20,), torch.uint8))  # spans whole pages
    assert not hugepages.advise(torch.empty(1 << 20, dtype=torch.uint8))  # under one page


@linux_only
def test_packed_model_gives_the_same_logits(golden_tokens, monkeypatch, huge_on):
    torch.set_num_threads(1)
    ids = golden_tokens[:40]
    packed = load_model(GOLDEN / "checkpoint", dtype=torch.bfloat16)
    block = packed.layers[0]
    arena = block.attn.wq_a.weight.untyped_storage().data_ptr()
    assert block.ffn.experts.w1.untyped_storage().data_ptr() == arena  # one buffer per block
    assert block.attn_norm.untyped_storage().data_ptr() == arena
    monkeypatch.setenv("DSV4_HUGEPAGES", "0")
    hugepages._madvise.cache_clear()
    plain = load_model(GOLDEN / "checkpoint", dtype=torch.bfloat16)
    assert plain.layers[0].ffn.experts.w1.untyped_storage().data_ptr() != (
        plain.layers[0].attn.wq_a.weight.untyped_storage().data_ptr()
    )
    a, b = packed.new_session(), plain.new_session()
    assert torch.equal(a.prefill(ids), b.prefill(ids))
    assert torch.equal(a.decode(7), b.decode(7))
