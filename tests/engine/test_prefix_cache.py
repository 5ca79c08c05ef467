"""PrefixCache: longest-prefix reuse, forking, truncation, LRU eviction, counters; and, on the
golden tiny checkpoint, logits after reuse equal a fresh full prefill."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4.engine.prefix_cache import PrefixCache, common_prefix

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "checkpoint"


class FakeSession:
    """Records the tokens it was fed; `fork` copies them."""

    def __init__(self, tokens: list[int] | None = None) -> None:
        self.tokens = list(tokens or [])
        self.forks = 0

    @property
    def pos(self) -> int:
        return len(self.tokens)

    def prefill(self, ids: list[int]) -> None:
        self.tokens += list(ids)

    def fork(self) -> FakeSession:
        self.forks += 1
        return type(self)(self.tokens)


class TruncatableSession(FakeSession):
    def truncate(self, n: int) -> None:
        assert 0 <= n <= len(self.tokens)
        del self.tokens[n:]


class FakeModel:
    def __init__(self, session_type: type = FakeSession) -> None:
        self.session_type = session_type
        self.created = 0

    def new_session(self) -> FakeSession:
        self.created += 1
        return self.session_type()


def run(cache: PrefixCache, prompt: list[int], generated: list[int] = ()) -> tuple[object, int]:
    """One request: acquire, prefill the rest, 'generate', release."""
    session, reused = cache.acquire(prompt)
    assert session.tokens == prompt[:reused]
    session.prefill(prompt[reused:] + list(generated))
    cache.release(session, session.tokens)
    return session, reused


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_empty_cache_gives_fresh_session() -> None:
    model = FakeModel()
    cache = PrefixCache(model)
    session, reused = cache.acquire([1, 2, 3])
    assert reused == 0 and session.tokens == [] and model.created == 1
    assert cache.prefilled_tokens == 3 and cache.reused_tokens == 0


def test_conversation_extension_reuses_whole_cached_prefix() -> None:
    model = FakeModel()
    cache = PrefixCache(model)
    run(cache, [1, 2, 3], generated=[7, 8])
    session, reused = cache.acquire([1, 2, 3, 7, 8, 9, 10])
    assert reused == 5 and session.tokens == [1, 2, 3, 7, 8]
    assert cache.reused_tokens == 5 and cache.prefilled_tokens == 3 + 2


def test_reuse_forks_so_the_cached_copy_stays_for_another_conversation() -> None:
    cache = PrefixCache(FakeModel())
    run(cache, [1, 2, 3])  # a shared system prompt
    a, reused_a = run(cache, [1, 2, 3, 10, 11])
    b, reused_b = run(cache, [1, 2, 3, 20, 21])
    assert (reused_a, reused_b) == (3, 3)
    assert a.tokens == [1, 2, 3, 10, 11] and b.tokens == [1, 2, 3, 20, 21]
    assert cache.stats().entries == 3


def test_longest_prefix_wins() -> None:
    cache = PrefixCache(FakeModel())
    run(cache, [1, 2])
    run(cache, [1, 2, 3, 4])
    run(cache, [9, 9, 9])
    _, reused = cache.acquire([1, 2, 3, 4, 5])
    assert reused == 4


def test_one_prompt_token_is_always_left_to_prefill() -> None:
    """An identical prompt needs logits of its last token: a wholly-cached prompt can only be
    reused by cutting the session back, so without truncate it starts fresh."""
    cache = PrefixCache(FakeModel())
    run(cache, [1, 2, 3])
    session, reused = cache.acquire([1, 2, 3])
    assert reused == 0 and session.tokens == []

    cache = PrefixCache(FakeModel(TruncatableSession))
    run(cache, [1, 2, 3])
    session, reused = cache.acquire([1, 2, 3])
    assert reused == 2 and session.tokens == [1, 2]


def test_divergence_inside_cached_session_without_truncate_starts_fresh() -> None:
    model = FakeModel()
    cache = PrefixCache(model)
    run(cache, [1, 2, 3, 4])
    session, reused = cache.acquire([1, 2, 5, 6])
    assert reused == 0 and session.tokens == [] and model.created == 2


def test_divergence_with_truncate_cuts_a_fork_back_and_keeps_the_original() -> None:
    cache = PrefixCache(FakeModel(TruncatableSession))
    original, _ = run(cache, [1, 2, 3, 4])
    session, reused = cache.acquire([1, 2, 5, 6])
    assert reused == 2 and session.tokens == [1, 2]
    assert original.tokens == [1, 2, 3, 4]


def test_lru_eviction_drops_least_recently_used() -> None:
    cache = PrefixCache(FakeModel(), capacity=2)
    run(cache, [1, 1])
    run(cache, [2, 2])
    cache.acquire([1, 1, 5])  # touches [1, 1]: now [2, 2] is the oldest
    run(cache, [3, 3])
    assert cache.stats().entries == 2
    assert cache.acquire([2, 2, 5])[1] == 0
    assert cache.acquire([1, 1, 5])[1] == 2
    assert cache.acquire([3, 3, 5])[1] == 2


def test_release_same_tokens_replaces_the_entry() -> None:
    cache = PrefixCache(FakeModel())
    run(cache, [1, 2])
    run(cache, [1, 2])
    assert cache.stats().entries == 1


def test_capacity_zero_never_reuses() -> None:
    cache = PrefixCache(FakeModel(), capacity=0)
    run(cache, [1, 2, 3])
    assert cache.acquire([1, 2, 3, 4])[1] == 0


def test_release_checks_the_session_length() -> None:
    cache = PrefixCache(FakeModel())
    with pytest.raises(ValueError, match="holds 2 tokens but 3"):
        cache.release(FakeSession([1, 2]), [1, 2, 3])


def test_acquire_rejects_empty_prompt() -> None:
    with pytest.raises(ValueError, match="empty"):
        PrefixCache(FakeModel()).acquire([])


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN.exists(), reason="golden checkpoint missing")
def test_reuse_matches_fresh_prefill_on_golden_checkpoint() -> None:
    import torch

    from dsv4.engine import load_model
    from dsv4.engine.encoding import encode_messages
    from dsv4.engine.tokenizer import get_tokenizer

    model = load_model(GOLDEN, dtype=torch.float32, quant_sim=False)
    messages = [{"role": "user", "content": "Reuse the prefix, then compare every logit."}]
    text = encode_messages(messages) + "The answer is forty-two, as always."
    prompt = get_tokenizer().encode(text)
    split = len(prompt) - 9

    cache = PrefixCache(model)
    first, reused = cache.acquire(prompt[:split])
    first.prefill(prompt[:split])
    cache.release(first, prompt[:split])
    session, reused = cache.acquire(prompt)
    assert reused == split
    reused_logits = session.prefill(prompt[split:])

    fresh_logits = model.new_session().prefill(prompt)[split:]
    torch.testing.assert_close(reused_logits, fresh_logits, atol=1e-4, rtol=0)
