"""The one-token attention step (`engine/attention_step.py`) against the general path: the
same C calls with the same arguments, so the same bits, across the window's wrap and the
compressors' boundaries, for both production dtypes and with the simulation off."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine import load_model
from dsv4.engine.attention import Attention
from dsv4.engine.attention_step import AttentionStep
from dsv4.kernels import native

from .conftest import GOLDEN

pytestmark = pytest.mark.skipif(
    native.library("gemm") is None, reason="no C compiler: the step path needs the C kernels"
)


@pytest.mark.parametrize("dtype, sim", [(torch.bfloat16, True), (torch.float32, False)])
def test_step_path_gives_the_general_paths_bits(golden_tokens, dtype, sim, monkeypatch):
    torch.set_num_threads(1)
    model = load_model(GOLDEN / "checkpoint", dtype=dtype, quant_sim=sim)
    steps = []
    real_call = AttentionStep.__call__

    def counted(self, *args):
        steps.append(self)
        return real_call(self, *args)

    monkeypatch.setattr(AttentionStep, "__call__", counted)
    fast, slow = model.new_session(), model.new_session()
    prompt, rest = golden_tokens[:9], golden_tokens[9:150]  # 16-token window, ratios 4 and 128
    assert torch.equal(fast.prefill(prompt), slow.prefill(prompt))
    general = Attention._step_for
    for token in rest:
        want_fast = fast.decode(token)
        monkeypatch.setattr(Attention, "_step_for", lambda self, x, nx: None)
        want_slow = slow.decode(token)
        monkeypatch.setattr(Attention, "_step_for", general)
        assert torch.equal(want_fast, want_slow), f"position {fast.pos}"
    assert len(steps) == len(rest) * len(model.layers)  # every layer took the step path
    assert model.layers[0].attn.args.o_groups > 1  # the grouped output projection ran
