"""Sessions share weights only: interleaved sessions, forks and fresh sessions are independent."""

from __future__ import annotations

import pytest
import torch


def test_interleaved_sessions_do_not_interact(exact_model, golden_tokens):
    a_ids, b_ids = golden_tokens[:40], golden_tokens[100:140]
    solo = exact_model.new_session()
    alone = torch.cat([solo.prefill(a_ids[i : i + 10]) for i in range(0, 40, 10)])
    a, b = exact_model.new_session(), exact_model.new_session()
    parts = []
    for i in range(0, 40, 10):  # alternate chunks of two different sequences
        parts.append(a.prefill(a_ids[i : i + 10]))
        b.prefill(b_ids[i : i + 10])
    assert torch.equal(torch.cat(parts), alone)
    assert a.pos == b.pos == 40


def test_new_session_starts_fresh(exact_model, golden_tokens):
    first = exact_model.new_session().prefill(golden_tokens[:3])
    used = exact_model.new_session()
    used.prefill(golden_tokens[200:290])  # leaves compressor rows and window entries behind
    again = exact_model.new_session().prefill(golden_tokens[:3])
    assert torch.equal(first, again)


def test_fork_continues_independently(exact_model, golden_tokens):
    base = exact_model.new_session()
    base.prefill(golden_tokens[:30])
    twin = base.fork()
    x = base.decode(golden_tokens[30])
    base.decode(golden_tokens[31])  # must not disturb the fork
    y = twin.decode(golden_tokens[30])
    assert torch.equal(x, y) and twin.pos == 31 and base.pos == 32


def test_bad_token_ids_are_rejected(exact_model):
    with pytest.raises(ValueError, match="token ids"):
        exact_model.new_session().prefill([exact_model.args.vocab_size])


def test_mtp_block_is_callable(exact_model, golden_tokens):
    session = exact_model.new_session()
    session.prefill(golden_tokens[:20])
    state = exact_model.new_state().mtp[0]
    logits = exact_model.mtp_forward(
        session.last_hidden, torch.tensor(golden_tokens[1:21]), 0, state
    )
    assert logits.shape == (20, exact_model.args.vocab_size) and torch.isfinite(logits).all()
