"""`dsv4 generate` end to end on a fake model (a scripted logits function)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dsv4.engine
from dsv4.cli.app import app
from dsv4.engine.tokenizer import EOS_ID, VOCAB_SIZE, get_tokenizer

REPLY = "Let me think.</think>Hi there! 💡"


class FakeSession:
    """Makes the scripted reply certain under any sampling settings, token by token, then EOS.

    Every other token gets a logit so low that its probability is exactly zero in fp32, so a
    test that samples (the CLI's default temperature) cannot draw a stray token.
    """

    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.step = 0

    def _logits(self) -> torch.Tensor:
        script = self.model.script
        target = script[self.step] if self.step < len(script) else EOS_ID
        logits = torch.full((VOCAB_SIZE,), -1.0e4)
        logits[target] = 0.0
        return logits

    def prefill(self, ids: list[int], logits: str = "all") -> torch.Tensor:
        self.model.prompts.append(list(ids))
        rows = torch.stack([torch.zeros(VOCAB_SIZE)] * (len(ids) - 1) + [self._logits()])
        return rows[{"all": 0, "last": -1, "none": len(ids)}[logits] :]

    def decode(self, token_id: int) -> torch.Tensor:
        if self.model.fail_at is not None and self.step + 1 >= self.model.fail_at:
            raise RuntimeError("CUDA error: device-side assert triggered")
        self.step += 1
        return self._logits()


class FakeModel:
    def __init__(self, reply: str = REPLY, fail_at: int | None = None) -> None:
        self.script = get_tokenizer().encode(reply)
        self.prompts: list[list[int]] = []
        self.fail_at = fail_at
        self.loaded_with: dict = {}

    def new_session(self) -> FakeSession:
        return FakeSession(self)


@pytest.fixture
def fake(monkeypatch):
    model = FakeModel()

    def load_model(path_or_id, device="cpu", dtype=torch.bfloat16, quant_sim=True):
        model.loaded_with = {"path": path_or_id, "device": device, "dtype": dtype}
        return model

    monkeypatch.setattr(dsv4.engine, "load_model", load_model, raising=False)
    monkeypatch.delenv("DSV4_MODEL", raising=False)
    return model


runner = CliRunner()


def test_json_stream(fake):
    result = runner.invoke(
        app,
        ["generate", "Hello?", "--model", "m", "--json", "--device", "cpu", "--temperature", "0"],
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    reasoning = "".join(e["text"] for e in events if e["event"] == "reasoning")
    content = "".join(e["text"] for e in events if e["event"] == "content")
    assert (reasoning, content) == ("Let me think.", "Hi there! 💡")
    done = events[-1]
    assert done["event"] == "done" and done["finish_reason"] == "eos" and done["errors"] == []
    assert done["generated_tokens"] == len(fake.script) + 1
    assert done["prompt_tokens"] == len(fake.prompts[0])
    assert fake.loaded_with == {"path": "m", "device": "cpu", "dtype": torch.bfloat16}
    prompt = get_tokenizer().decode(fake.prompts[0])
    assert prompt == "<｜begin▁of▁sentence｜><｜User｜>Hello?<｜Assistant｜><think>"


def test_rich_output_shows_reasoning_and_answer(fake):
    result = runner.invoke(app, ["generate", "Hello?", "--model", "m", "--system", "Be brief."])
    assert result.exit_code == 0, result.output
    assert "Let me think." in result.stdout and "Hi there! 💡" in result.stdout
    assert "[eos]" in result.stderr
    assert (
        get_tokenizer()
        .decode(fake.prompts[0])
        .startswith("<｜begin▁of▁sentence｜>Be brief.<｜User｜>")
    )


def test_no_thinking_uses_chat_mode(fake):
    fake.script = get_tokenizer().encode("Plain answer.")
    result = runner.invoke(app, ["generate", "Q", "--model", "m", "--no-thinking", "--json"])
    assert result.exit_code == 0, result.output
    assert get_tokenizer().decode(fake.prompts[0]).endswith("<｜Assistant｜></think>")
    done = json.loads(result.stdout.splitlines()[-1])
    assert (done["content"], done["reasoning"]) == ("Plain answer.", "")


def test_max_new_tokens_gives_length(fake):
    result = runner.invoke(
        app, ["generate", "Q", "--model", "m", "--json", "--max-new-tokens", "2"]
    )
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout.splitlines()[-1])
    assert (done["finish_reason"], done["generated_tokens"]) == ("length", 2)


def test_model_from_environment(fake, monkeypatch):
    monkeypatch.setenv("DSV4_MODEL", "from-env")
    result = runner.invoke(app, ["generate", "Q", "--json"])
    assert result.exit_code == 0, result.output
    assert fake.loaded_with["path"] == "from-env"


def test_missing_model_is_a_usage_error(fake):
    result = runner.invoke(app, ["generate", "Q"])
    assert result.exit_code == 2
    assert "no model given: pass --model DIR" in result.stderr


def test_unloadable_model_is_a_usage_error(monkeypatch):
    def load_model(path_or_id, **kwargs):
        raise FileNotFoundError(f"no checkpoint at {path_or_id!r}")

    monkeypatch.setattr(dsv4.engine, "load_model", load_model, raising=False)
    result = runner.invoke(app, ["generate", "Q", "--model", "missing/dir"])
    assert result.exit_code == 2
    assert "cannot load model 'missing/dir': no checkpoint at 'missing/dir'" in result.stderr


def test_bad_sampling_option_is_a_usage_error(fake):
    result = runner.invoke(app, ["generate", "Q", "--model", "m", "--top-p", "0"])
    assert result.exit_code == 2
    assert "SamplingParams.top_p=0.0" in result.stderr


def test_engine_failure_is_exit_4(fake):
    fake.fail_at = 2
    result = runner.invoke(app, ["generate", "Q", "--model", "m"])
    assert result.exit_code == 4
    assert "generation failed: RuntimeError: CUDA error" in result.stderr


def test_module_import_does_not_load_torch():
    code = "import sys, dsv4.cli.generate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


GOLDEN_CKPT = Path(__file__).resolve().parents[1] / "data/golden/checkpoint"


def test_generate_end_to_end_on_a_tiny_checkpoint_is_reproducible() -> None:
    """The real engine on the golden tiny checkpoint (noise weights): seeded runs agree."""
    args = ["generate", "Say hi.", "--model", str(GOLDEN_CKPT), "--max-new-tokens", "4",
            "--temperature", "1.0", "--seed", "7", "--json"]  # fmt: skip
    runs = [CliRunner().invoke(app, args) for _ in range(2)]
    for run in runs:
        assert run.exit_code == 0, run.output
    events = [[json.loads(line) for line in r.stdout.splitlines() if line.strip()] for r in runs]
    done = [e[-1] for e in events]
    assert [d["event"] for d in done] == ["done", "done"]
    assert done[0]["generated_tokens"] == 4 and done[0]["finish_reason"] == "length"
    assert done[0]["prompt_tokens"] > 0
    assert done[0]["reasoning"] + done[0]["content"] == done[1]["reasoning"] + done[1]["content"]
    deltas = "".join(e.get("text", "") for e in events[0][:-1])
    assert deltas == done[0]["reasoning"] + done[0]["content"]
