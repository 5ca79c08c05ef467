"""Incremental detokenization: deltas never split a character and add up to `decode`."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.engine.detokenizer import IncrementalDetokenizer, token_bytes
from dsv4.engine.tokenizer import VOCAB_SIZE, get_tokenizer


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def deltas(tok, ids):
    detok = IncrementalDetokenizer(tok)
    return [detok.push(i) for i in ids], detok.flush()


def test_split_character_is_held_until_complete(tok):
    ids = tok.encode(" 💡")
    assert len(ids) == 2  # the emoji's four bytes straddle two tokens
    pushed, rest = deltas(tok, ids)
    assert pushed == [" ", "💡"] and rest == ""


def test_chat_tokens_decode_as_their_text(tok):
    ids = tok.encode("<｜User｜>hi<｜Assistant｜><think>")
    pushed, _ = deltas(tok, ids)
    assert pushed == ["<｜User｜>", "hi", "<｜Assistant｜>", "<think>"]


def test_unfinished_character_becomes_replacement_at_flush(tok):
    first = tok.encode(" 💡")[0]
    pushed, rest = deltas(tok, [first])
    assert pushed == [" "] and rest == "\ufffd"


def test_every_added_token_matches_decode(tok):
    for tid in [0, 1, 2, *range(128000, VOCAB_SIZE)]:
        assert token_bytes(tok.id_to_token(tid)).decode("utf-8", "replace") == tok.decode([tid])


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_text_round_trips_through_deltas(text):
    tok = get_tokenizer()
    pushed, rest = deltas(tok, tok.encode(text))
    assert "".join(pushed) + rest == text
    assert all("\ufffd" not in d for d in pushed)


def test_random_ids_agree_with_decode(tok):
    rng = random.Random(0)
    for _ in range(100):
        ids = [rng.randrange(VOCAB_SIZE) for _ in range(20)]
        pushed, rest = deltas(tok, ids)
        assert "".join(pushed) + rest == tok.decode(ids)
