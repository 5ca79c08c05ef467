"""The one-token steps (`engine/attention_step.py`, `engine/block_step.py`) against the
general path: the same C calls with the same arguments, so the same bits, across the
window's wrap, the compressors' boundaries, the grouped output projection, hash and top-k
MoE layers, for both production dtypes and with the simulation off."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine import load_model
from dsv4.engine.attention import Attention
from dsv4.engine.attention_step import AttentionStep
from dsv4.engine.block import Block
from dsv4.engine.block_step import BlockStep
from dsv4.kernels import native

from .conftest import GOLDEN

pytestmark = pytest.mark.skipif(
    native.library("gemm") is None, reason="no C compiler: the steps need the C kernels"
)


def _compare(monkeypatch, golden_tokens, dtype, sim, step_cls, general: tuple, n_prompt, n):
    """Decode with the steps and, in a twin session, with the `_step_for` of the classes in
    `general` switched off (the other steps still run); every logit must match. Returns
    (model, how many times `step_cls` ran in either session, decoded tokens)."""
    torch.set_num_threads(1)
    model = load_model(GOLDEN / "checkpoint", dtype=dtype, quant_sim=sim)
    calls = []
    real_call = step_cls.__call__

    def counted(self, *args):
        calls.append(self)
        return real_call(self, *args)

    monkeypatch.setattr(step_cls, "__call__", counted)
    fast, slow = model.new_session(), model.new_session()
    prompt, rest = golden_tokens[:n_prompt], golden_tokens[n_prompt : n_prompt + n]
    assert torch.equal(fast.prefill(prompt), slow.prefill(prompt))
    real = {cls: cls._step_for for cls in general}
    for token in rest:
        want_fast = fast.decode(token)
        for cls in general:
            monkeypatch.setattr(cls, "_step_for", lambda self, x, nx: None)
        want_slow = slow.decode(token)
        for cls, fn in real.items():
            monkeypatch.setattr(cls, "_step_for", fn)
        assert torch.equal(want_fast, want_slow), f"position {fast.pos}"
    return model, len(calls), len(rest)


@pytest.mark.parametrize("dtype, sim", [(torch.bfloat16, True), (torch.float32, False)])
def test_attention_step_gives_the_general_paths_bits(golden_tokens, dtype, sim, monkeypatch):
    # a 16-token window and ratios 4 and 128: 141 steps cross all their boundaries
    model, calls, steps = _compare(monkeypatch, golden_tokens, dtype, sim, AttentionStep,
                                   (Attention,), 9, 141)  # fmt: skip
    assert calls == steps * len(model.layers)  # every layer of the fast session took it
    assert model.layers[0].attn.args.o_groups > 1  # the grouped output projection ran


@pytest.mark.parametrize("dtype, sim", [(torch.bfloat16, True), (torch.float32, False)])
def test_block_step_gives_the_general_paths_bits(golden_tokens, dtype, sim, monkeypatch):
    model, calls, steps = _compare(monkeypatch, golden_tokens, dtype, sim, BlockStep,
                                   (Block,), 5, 65)  # fmt: skip
    assert calls == steps * len(model.layers)
    assert any(b.ffn.tid2eid is not None for b in model.layers)  # hash layers ran
    assert any(b.ffn.bias is not None for b in model.layers)  # and top-k ones


def test_sessions_decoding_on_two_threads_keep_their_own_steps(golden_tokens):
    """A step's scratch rows are per thread: two sessions of one model decoded at once on two
    threads (the C calls release the GIL) give what each gives alone."""
    import threading

    torch.set_num_threads(1)
    model = load_model(GOLDEN / "checkpoint", dtype=torch.bfloat16, quant_sim=True)
    prompts = (golden_tokens[:20], golden_tokens[40:47])
    feeds = (golden_tokens[20:60], golden_tokens[100:140])

    def run(prompt, feed, out):
        session = model.new_session()
        session.prefill(prompt)
        out.extend(session.decode(t) for t in feed)

    alone = [[], []]
    for i in range(2):
        run(prompts[i], feeds[i], alone[i])
    together = [[], []]
    threads = [threading.Thread(target=run, args=(prompts[i], feeds[i], together[i]))
               for i in range(2)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert len(a) == len(b) == 40 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(model.layers[0]._steps) >= 2  # one step per thread that decoded


def test_steps_decline_what_their_c_calls_do_not_take():
    """The general path runs for dims the bound C calls would not take whole."""
    import dataclasses

    from dsv4.engine.numerics import Numerics

    model = load_model(GOLDEN / "checkpoint", dtype=torch.bfloat16, quant_sim=True)
    attn, nx = model.layers[1].attn, Numerics(torch.bfloat16, True)
    x = torch.zeros(1, model.args.dim, dtype=torch.bfloat16)
    assert AttentionStep.build(attn, x, nx) is not None
    odd_args = dataclasses.replace(attn.args, rope_head_dim=attn.args.rope_head_dim - 16)
    odd = dataclasses.replace(attn, args=odd_args)  # 464 non-RoPE dims: not blocks of 64
    assert AttentionStep.build(odd, x, nx) is None
    assert AttentionStep.build(attn, x.float(), nx) is not None  # fp32 activations are taken
    assert AttentionStep.build(attn, x.half(), nx) is None
