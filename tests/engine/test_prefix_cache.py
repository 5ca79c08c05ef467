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

    def prefill(self, ids: list[int], logits: str = "all") -> None:
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


# -- engine sessions on the golden tiny checkpoint (fp32, quant_sim off) ---------------------
class SnapshottingModel:
    """Hands out engine sessions that snapshot every 64 tokens (and at each prefill's end)."""

    def __init__(self, model) -> None:
        self.model = model

    def new_session(self):
        from dsv4.engine.session import Session
        from dsv4.engine.snapshots import SnapshotLog, SnapshotPolicy

        return Session(self.model, snapshots=SnapshotLog(SnapshotPolicy(interval=64)))


def serve(cache: PrefixCache, prompt: list[int], generated: list[int]):
    """One request on a real session: prefill the rest, decode `generated`, release.
    Returns the prompt's logits from the reused position on."""
    import torch

    session, reused = cache.acquire(prompt)
    assert session.pos == reused
    logits = session.prefill(prompt[reused:])
    for t in generated:
        session.decode(t)
    cache.release(session, prompt + generated)
    return logits if logits.ndim == 2 else torch.empty(0)


def assert_fresh(model, prompt: list[int], logits, start: int) -> None:
    fresh = model.new_session().prefill(prompt)[start:]
    assert logits.shape == fresh.shape
    assert (logits - fresh).abs().max().item() <= 1e-4


def test_engine_extension_prefills_only_the_suffix(exact_model, golden_tokens) -> None:
    cache = PrefixCache(SnapshottingModel(exact_model))
    serve(cache, golden_tokens[:150], golden_tokens[150:160])
    assert (cache.prefilled_tokens, cache.reused_tokens) == (150, 0)
    prompt = golden_tokens[:220]
    logits = serve(cache, prompt, [])
    stats = cache.stats()
    assert (stats.prefilled_tokens, stats.reused_tokens, stats.replayed_tokens) == (210, 160, 0)
    assert_fresh(exact_model, prompt, logits, 160)


def test_engine_divergence_at_the_prompt_end_is_exact(exact_model, golden_tokens) -> None:
    """A regenerated answer diverges where the last prompt ended: a snapshot, nothing replayed."""
    cache = PrefixCache(SnapshottingModel(exact_model))
    serve(cache, golden_tokens[:150], golden_tokens[150:160])
    prompt = golden_tokens[:150] + golden_tokens[290:320]
    logits = serve(cache, prompt, [])
    assert (cache.reused_tokens, cache.replayed_tokens, cache.prefilled_tokens) == (150, 0, 180)
    assert_fresh(exact_model, prompt, logits, 150)


def test_engine_divergence_inside_replays_from_the_last_snapshot(exact_model, golden_tokens):
    cache = PrefixCache(SnapshottingModel(exact_model))
    serve(cache, golden_tokens[:150], golden_tokens[150:160])
    prompt = golden_tokens[:131] + golden_tokens[290:320]
    assert common_prefix(prompt, golden_tokens[:160]) == 131
    logits = serve(cache, prompt, [])
    # Cut at 131: the snapshot at 128 is restored and 3 tokens are prefilled again.
    assert (cache.reused_tokens, cache.replayed_tokens) == (128, 3)
    assert cache.prefilled_tokens == 150 + (len(prompt) - 131) + 3
    assert_fresh(exact_model, prompt, logits, 131)
    # The cached conversation is intact: extending it still reuses all 160 tokens.
    logits = serve(cache, golden_tokens[:200], [])
    assert_fresh(exact_model, golden_tokens[:200], logits, 160)
