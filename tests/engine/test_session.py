"""Sessions share weights only: interleaved sessions, forks and fresh sessions are independent."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine.session import Session
from dsv4.engine.snapshots import SnapshotLog, SnapshotPolicy


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


def test_prefill_can_skip_the_head_for_all_but_the_last_row(
    exact_model, golden_tokens, monkeypatch
):
    ids, nxt = golden_tokens[:150], golden_tokens[150]
    full = exact_model.new_session()
    every = full.prefill(ids)
    after = full.decode(nxt)
    head_rows: list[int] = []
    logits_fn = exact_model.logits

    def counting(h, mix, norm):
        head_rows.append(h.shape[0])
        return logits_fn(h, mix, norm)

    monkeypatch.setattr(exact_model, "logits", counting)
    # Snapshots every 64 tokens: three chunks, of which only the very last row reaches the head.
    lean = Session(exact_model, snapshots=SnapshotLog(SnapshotPolicy(interval=64)))
    last = lean.prefill(ids, logits="last")
    assert last.shape == (1, exact_model.args.vocab_size) and head_rows == [1]
    assert torch.allclose(last[0], every[-1], atol=1e-5, rtol=0)
    assert int(last[0].argmax()) == int(every[-1].argmax())
    assert lean.last_hidden.shape[0] == 1 and lean.pos == 150
    quiet = exact_model.new_session()
    assert quiet.prefill(ids, logits="none").shape == (0, exact_model.args.vocab_size)
    assert head_rows == [1]
    # The state advanced as with every row computed: exactly with the same chunking, up to
    # the rounding of a different chunking otherwise.
    monkeypatch.undo()
    assert torch.equal(quiet.decode(nxt), after)
    assert torch.allclose(lean.decode(nxt), after, atol=1e-4, rtol=0)
