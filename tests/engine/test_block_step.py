"""The one-token block step (`engine/block_step.py`) against the general path: the same C
calls with the same arguments, so the same bits, on hash and top-k MoE layers, for both
production dtypes and with the simulation off."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine import load_model
from dsv4.engine.attention import Attention
from dsv4.engine.block import Block
from dsv4.engine.block_step import BlockStep
from dsv4.kernels import native

from .conftest import GOLDEN

pytestmark = pytest.mark.skipif(
    native.library("gemm") is None, reason="no C compiler: the step path needs the C kernels"
)


@pytest.mark.parametrize("dtype, sim", [(torch.bfloat16, True), (torch.float32, False)])
def test_block_step_gives_the_general_paths_bits(golden_tokens, dtype, sim, monkeypatch):
    torch.set_num_threads(1)
    model = load_model(GOLDEN / "checkpoint", dtype=dtype, quant_sim=sim)
    steps = []
    real_call = BlockStep.__call__

    def counted(self, *args):
        steps.append(self)
        return real_call(self, *args)

    monkeypatch.setattr(BlockStep, "__call__", counted)
    fast, slow = model.new_session(), model.new_session()
    prompt, rest = golden_tokens[:5], golden_tokens[5:70]
    assert torch.equal(fast.prefill(prompt), slow.prefill(prompt))
    block_step, attn_step = Block._step_for, Attention._step_for
    for token in rest:
        want_fast = fast.decode(token)
        monkeypatch.setattr(Block, "_step_for", lambda self, h, nx: None)
        monkeypatch.setattr(Attention, "_step_for", lambda self, x, nx: None)
        want_slow = slow.decode(token)
        monkeypatch.setattr(Block, "_step_for", block_step)
        monkeypatch.setattr(Attention, "_step_for", attn_step)
        assert torch.equal(want_fast, want_slow), f"position {fast.pos}"
    assert len(steps) == len(rest) * len(model.layers)  # every block took the step path
    assert any(b.ffn.tid2eid is not None for b in model.layers)  # hash layers ran
    assert any(b.ffn.bias is not None for b in model.layers)  # and top-k ones
