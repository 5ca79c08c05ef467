"""The generation loop on a scripted session: events, finish reasons, stop strings."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine.generate import GenerationEvent, LogitsSession, StopMatcher, generate
from dsv4.engine.sampler import SamplingParams
from dsv4.engine.tokenizer import EOS_ID, VOCAB_SIZE, get_tokenizer


class ScriptedSession:
    """A LogitsSession whose logits make a fixed token sequence the argmax, then EOS forever.

    It records what it was fed, so tests can check the loop's calls.
    """

    def __init__(self, script: list[int], vocab: int = VOCAB_SIZE) -> None:
        self.script = list(script)
        self.vocab = vocab
        self.fed: list[int] = []
        self.prefills: list[list[int]] = []
        self.asked: list[str] = []  # the `logits` argument of each prefill

    def _logits(self) -> torch.Tensor:
        step = len(self.fed) - sum(len(p) for p in self.prefills)
        target = self.script[step] if step < len(self.script) else EOS_ID
        logits = torch.zeros(self.vocab)
        logits[target] = 10.0
        return logits

    def prefill(self, ids: list[int], logits: str = "all") -> torch.Tensor:
        self.prefills.append(list(ids))
        self.asked.append(logits)
        rows = []
        for tid in ids:
            self.fed.append(tid)
            rows.append(torch.zeros(self.vocab))
        rows[-1] = self._logits()
        return torch.stack(rows)[{"all": 0, "last": -1, "none": len(rows)}[logits] :]

    def decode(self, token_id: int) -> torch.Tensor:
        self.fed.append(token_id)
        return self._logits()


def run(script, prompt=(0, 5), **kwargs):
    session = ScriptedSession(script)
    params = SamplingParams(temperature=0, **kwargs)
    events = list(generate(session, list(prompt), params, get_tokenizer()))
    return session, events


def text_of(events):
    return "".join(e.text for e in events)


def test_session_satisfies_the_protocol():
    session: LogitsSession = ScriptedSession([1])
    assert isinstance(session.decode(3), torch.Tensor)


def test_eos_finishes_and_text_matches_decode():
    tok = get_tokenizer()
    script = tok.encode("Hello, 世界 💡!")
    session, events = run(script)
    final = events[-1]
    assert (final.finish_reason, final.token_id) == ("eos", EOS_ID)
    assert (final.prompt_tokens, final.generated_tokens) == (2, len(script) + 1)
    assert [e.token_id for e in events[:-1]] == script
    assert text_of(events) == tok.decode(script)
    # The loop decodes every generated token but the last one into the session.
    assert session.fed == [0, 5, *script]
    # The prompt's logits are asked for its last position only.
    assert session.asked == ["last"]


def test_length_limit():
    script = get_tokenizer().encode("one two three four five six")
    _, events = run(script, max_new_tokens=3)
    assert events[-1] == GenerationEvent(None, "", "length", 2, 3)
    assert text_of(events) == get_tokenizer().decode(script[:3])


def test_stop_string_spanning_tokens_is_removed():
    tok = get_tokenizer()
    script = tok.encode("The answer is 42.\nEND_OF_ANSWER and more text")
    _, events = run(script, stop=["END_OF_ANSWER"])
    assert events[-1].finish_reason == "stop"
    assert text_of(events) == "The answer is 42.\n"
    assert len(events) < len(script)  # generation ended at the stop, not at EOS


def test_text_that_might_start_a_stop_is_held_back_then_released():
    tok = get_tokenizer()
    script = tok.encode("a STO b STOP c")
    _, events = run(script, stop=["STOP"])
    assert text_of(events) == "a STO b "
    held = [e for e in events if e.token_id is not None and e.text == ""]
    assert held, "some token's text must have been held back as a possible stop prefix"


def test_stop_at_length_limit_still_cuts():
    tok = get_tokenizer()
    script = tok.encode("xx STOP")
    _, events = run(script, stop=["STOP"], max_new_tokens=len(script))
    assert (events[-1].finish_reason, text_of(events)) == ("stop", "xx ")


def test_seeded_sampling_is_reproducible():
    class Uniform(ScriptedSession):
        def _logits(self):
            return torch.zeros(self.vocab)

    def tokens(seed):
        events = generate(
            Uniform([], vocab=1000),
            [0],
            SamplingParams(seed=seed, max_new_tokens=20),
            get_tokenizer(),
        )
        return [e.token_id for e in events]

    assert tokens(3) == tokens(3)
    assert tokens(3) != tokens(4)


def test_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="at least one prompt token"):
        list(generate(ScriptedSession([]), [], SamplingParams(), get_tokenizer()))


@pytest.mark.parametrize(
    ("deltas", "stops", "expected"),
    [
        (["ab", "c"], ["bc"], ("a", True)),
        (["x<", "/s", ">y"], ["</s>"], ("x", True)),
        (["hello"], ["z"], ("hello", False)),
        (["<", "a"], ["</s>"], ("<a", False)),
    ],
)
def test_stop_matcher(deltas, stops, expected):
    m = StopMatcher(stops)
    out, hit = "", False
    for d in deltas:
        text, hit = m.push(d)
        out += text
        if hit:
            break
    if not hit:
        out += m.flush()
    assert (out, hit) == expected
