"""Bad input to every `dsv4` command: the documented exit code, one message naming the thing
at fault, and never a traceback (nor a half-written output folder)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4.cli.app import app

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = DATA / "golden" / "checkpoint"
FLASH_CONFIG = DATA / "configs" / "DeepSeek-V4-Flash.config.json"
DSV4 = str(Path(sys.executable).with_name("dsv4"))
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
runner = CliRunner()


def invoke(*args: str, code: int, words: tuple[str, ...]) -> str:
    """Run `dsv4 ARGS`; check the exit code, that stderr names `words`, and no traceback."""
    result = runner.invoke(app, list(args), env={"COLUMNS": "300", "DSV4_MODEL": ""})
    # CliRunner catches what the command let escape: anything but an exit is a crash.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    assert "Traceback" not in result.output + result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


# -- fixtures: broken checkpoints and repositories -------------------------------------------


def folder_with_config(tmp_path: Path, content: bytes | None, name: str = "ckpt") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    if content is not None:
        (folder / "config.json").write_bytes(content)
    return folder


@pytest.fixture
def bad_json(tmp_path: Path) -> Path:
    return folder_with_config(tmp_path, b'{"hidden_size": 12')


@pytest.fixture
def not_utf8(tmp_path: Path) -> Path:
    return folder_with_config(tmp_path, b'{"a": "\xe1\xff"}')


@pytest.fixture
def config_is_a_folder(tmp_path: Path) -> Path:
    folder = folder_with_config(tmp_path, None)
    (folder / "config.json").mkdir()
    return folder


def git_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "test_x.py").write_text("def test_x():\n    assert False\n")
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    return git_repo(tmp_path)


@pytest.fixture
def bad_script(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"completion": "ok"}\nthis is not JSON\n')
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- dsv4 model info / verify ----------------------------------------------------------------


def test_info_missing_path(tmp_path: Path) -> None:
    invoke("model", "info", str(tmp_path / "nope"), code=2, words=("does not exist", "config.json"))


def test_info_file_instead_of_folder(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text("{}")
    invoke("model", "info", str(file), code=2, words=("is a file", "expected a checkpoint folder"))


def test_info_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    folder = folder_with_config(tmp_path, None)
    invoke("model", "info", str(folder), code=2, words=("no config.json",))


def test_info_corrupt_config(bad_json: Path) -> None:
    invoke("model", "info", str(bad_json), code=2, words=("config.json", "not valid JSON"))


def test_info_config_not_utf8(not_utf8: Path) -> None:
    invoke("model", "info", str(not_utf8), code=2, words=(str(not_utf8), "not UTF-8"))


def test_info_unreadable_config(config_is_a_folder: Path) -> None:
    invoke("model", "info", str(config_is_a_folder), code=2,
           words=("config.json", "Is a directory"))  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_info_config_without_read_permission(tmp_path: Path) -> None:
    folder = folder_with_config(tmp_path, FLASH_CONFIG.read_bytes())
    (folder / "config.json").chmod(0)
    invoke("model", "info", str(folder), code=2, words=("config.json", "Permission denied"))


def test_verify_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    invoke("model", "verify", str(tmp_path / "nope"), code=2, words=("does not exist",))


def test_verify_folder_without_config_is_a_usage_error(tmp_path: Path) -> None:
    folder = folder_with_config(tmp_path, None)
    invoke("model", "verify", str(folder), code=2, words=("holds no config.json",))


def test_verify_corrupt_config_is_a_problem(not_utf8: Path) -> None:
    result = runner.invoke(app, ["model", "verify", str(not_utf8)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and result.exception is not None  # SystemExit(1)
    assert isinstance(result.exception, SystemExit)
    assert "not UTF-8" in result.output and "1 problem(s)" in result.output


def test_verify_truncated_shard_names_the_file(tmp_path: Path) -> None:
    if not (GOLDEN / "config.json").is_file():
        pytest.skip("golden checkpoint not available")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in GOLDEN.iterdir():
        if path.name == "model-00003-of-00003.safetensors":
            (broken / path.name).write_bytes(path.read_bytes()[:-1000])  # the data cut short
        elif path.suffix == ".safetensors":
            os.symlink(path, broken / path.name)
        else:
            shutil.copy(path, broken / path.name)
    result = runner.invoke(app, ["model", "verify", str(broken)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "model-00003-of-00003.safetensors: truncated" in result.output


# -- dsv4 model tiny -------------------------------------------------------------------------


def test_tiny_into_a_file(tmp_path: Path) -> None:
    file = tmp_path / "out"
    file.write_text("x")
    invoke("model", "tiny", str(file), code=2, words=("is a file",))
    assert file.read_text() == "x"


def test_tiny_under_a_file(tmp_path: Path) -> None:
    file = tmp_path / "out"
    file.write_text("x")
    invoke("model", "tiny", str(file / "sub"), code=2, words=("is a file, not a folder",))


def test_tiny_interrupted_leaves_nothing(tmp_path: Path) -> None:
    from dsv4.engine.tiny import write_tiny_checkpoint

    def interrupt(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with pytest.raises(KeyboardInterrupt):
            write_tiny_checkpoint(out, "small", progress=interrupt)
        # A new folder never appears; an empty one given stays empty; no partial is left.
        assert list(out.iterdir()) == [] if out.name == "empty" else not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.slow
def test_tiny_sigint_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "medium"
    proc = subprocess.Popen([DSV4, "model", "tiny", str(out), "--preset", "medium"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".medium.partial-*/*.safetensors")):  # writing has begun
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# -- dsv4 generate ---------------------------------------------------------------------------


def test_generate_unknown_device() -> None:
    invoke("generate", "hi", "--model", "m", "--device", "tpu", code=2,
           words=("--device 'tpu'", "cpu"))  # fmt: skip


def test_generate_cuda_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    invoke("generate", "hi", "--model", "m", "--device", "cuda", code=2,
           words=("CUDA is not available", "--device cpu"))  # fmt: skip


def test_generate_negative_token_limit() -> None:
    invoke("generate", "hi", "--model", "m", "--max-new-tokens", "-1", code=2,
           words=("--max-new-tokens", ">= 1"))  # fmt: skip


def test_generate_corrupt_config(bad_json: Path) -> None:
    invoke("generate", "hi", "--model", str(bad_json), code=2,
           words=("cannot load model", "config.json", "not valid JSON"))  # fmt: skip


def test_generate_interrupted_while_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import dsv4.engine

    def load_model(path_or_id: str, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dsv4.engine, "load_model", load_model, raising=False)
    invoke("generate", "hi", "--model", "m", code=130, words=("interrupted",))


# -- dsv4 serve: every option and the address are checked before loading --------------------


def test_serve_port_in_use(busy_port: int, tmp_path: Path) -> None:
    invoke("serve", "--model", str(tmp_path / "never-loaded"), "--port", str(busy_port),
           code=2, words=(f":{busy_port}", "already in use", "--port"))  # fmt: skip


def test_serve_port_out_of_range(tmp_path: Path) -> None:
    invoke("serve", "--model", str(tmp_path), "--port", "70000", code=2,
           words=("--port", "0..65535"))  # fmt: skip


def test_serve_negative_queue(tmp_path: Path) -> None:
    invoke("serve", "--model", str(tmp_path), "--queue", "-1", code=2, words=("--queue",))


def test_serve_unknown_dtype(tmp_path: Path) -> None:
    invoke("serve", "--model", str(tmp_path), "--dtype", "fp16", code=2,
           words=("--dtype 'fp16'", "bf16 or fp32"))  # fmt: skip


def test_serve_unknown_device(tmp_path: Path) -> None:
    invoke("serve", "--model", str(tmp_path), "--device", "gpu0", code=2, words=("--device",))


def test_serve_unknown_host(tmp_path: Path) -> None:
    invoke("serve", "--model", str(tmp_path), "--host", "no-such-host.invalid", code=2,
           words=("unknown host", "--host"))  # fmt: skip


def test_serve_replay_that_is_not_json_lines(bad_script: Path) -> None:
    invoke("serve", "--replay", str(bad_script), "--port", "0", code=2,
           words=("--replay", f"{bad_script}:2", "not JSON"))  # fmt: skip


def test_serve_corrupt_config(bad_json: Path) -> None:
    invoke("serve", "--model", str(bad_json), "--port", "0", "--device", "cpu", code=2,
           words=("cannot load model", "not valid JSON"))  # fmt: skip


# -- dsv4 agent fix / run --------------------------------------------------------------------


def fix(repo: Path, *extra: str, code: int, words: tuple[str, ...]) -> str:
    return invoke("agent", "fix", str(repo), "--test", "false", "--ci", "--no-index", *extra,
                  code=code, words=words)  # fmt: skip


def test_fix_missing_repository(tmp_path: Path) -> None:
    invoke("agent", "fix", str(tmp_path / "nope"), code=2, words=("nope", "does not exist"))


def test_fix_script_that_is_not_json_lines(repo: Path, bad_script: Path) -> None:
    fix(repo, "--script", str(bad_script), code=2, words=("--script", f"{bad_script}:2"))


def test_fix_missing_script(repo: Path, tmp_path: Path) -> None:
    fix(repo, "--script", str(tmp_path / "none.jsonl"), code=2,
        words=("--script", "none.jsonl", "No such file"))  # fmt: skip


def test_fix_missing_model(repo: Path, tmp_path: Path) -> None:
    fix(repo, "--model", str(tmp_path / "nope"), code=2, words=("--model", "does not exist"))


def test_fix_corrupt_model_config(repo: Path, not_utf8: Path) -> None:
    fix(repo, "--model", str(not_utf8), code=2, words=("--model", "not UTF-8", "config.json"))


def test_fix_endpoint_that_is_not_a_url(repo: Path) -> None:
    fix(repo, "--endpoint", "localhost-8000", code=2, words=("--endpoint", "http(s) URL"))


def test_fix_endpoint_on_a_closed_port(repo: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    fix(repo, "--endpoint", url, code=4, words=("cannot reach endpoint", url, "running"))


def test_fix_non_positive_limits(repo: Path) -> None:
    fix(repo, "--max-steps", "0", code=2, words=("--max-steps", "must be positive"))
    fix(repo, "--timeout", "-1", code=2, words=("--timeout", "must be positive"))


def test_fix_unexpected_error_is_one_line(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dsv4.agent.fix

    def broken(opts: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.delenv("DSV4_DEBUG", raising=False)
    monkeypatch.setattr(dsv4.agent.fix, "build_backend", broken)
    fix(repo, "--model", "m", code=4, words=("unexpected RuntimeError: boom", "DSV4_DEBUG"))


def test_run_empty_task(repo: Path) -> None:
    invoke("agent", "run", "", "-C", str(repo), code=2, words=("TASK",))


# -- dsv4 chat / undo / hook / doctor --------------------------------------------------------


def test_chat_missing_repository(tmp_path: Path, bad_script: Path) -> None:
    invoke("chat", str(tmp_path / "nope"), "--script", str(bad_script), code=2,
           words=("nope", "not a directory"))  # fmt: skip


def test_chat_outside_git(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    plain = tmp_path / "plain"
    plain.mkdir()
    invoke("chat", str(plain), "--script", "unused.jsonl", code=2,
           words=("not inside a git work tree", "git init"))  # fmt: skip


def test_chat_script_that_is_not_json_lines(repo: Path, bad_script: Path) -> None:
    invoke("chat", str(repo), "--script", str(bad_script), code=2,
           words=("--script", f"{bad_script}:2"))  # fmt: skip


def test_chat_missing_model(repo: Path, tmp_path: Path) -> None:
    invoke("chat", str(repo), "--model", str(tmp_path / "nope"), code=2,
           words=("--model", "does not exist"))  # fmt: skip


def test_undo_missing_path(tmp_path: Path) -> None:
    invoke("undo", str(tmp_path / "nope"), code=2, words=("does not exist",))


def test_undo_outside_git(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    invoke("undo", str(tmp_path), code=2, words=("not inside a git work tree", "git init"))


def test_hook_install_missing_path(tmp_path: Path) -> None:
    invoke("hook", "install", str(tmp_path / "nope"), code=2, words=("does not exist",))


def test_hook_install_file_instead_of_folder(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    invoke("hook", "install", str(file), code=2, words=("is not a directory",))


def test_hook_run_bad_restage(repo: Path) -> None:
    invoke("hook", "run", str(repo), "--restage", "sometimes", code=2, words=("--restage",))


def test_doctor_names_why_a_model_is_unusable(bad_json: Path) -> None:
    invoke("doctor", "--model", str(bad_json), code=1,
           words=("model (--model)", "config.json is corrupt"))  # fmt: skip


def test_doctor_missing_model_folder(tmp_path: Path) -> None:
    invoke("doctor", "--model", str(tmp_path / "nope"), code=1, words=("no such folder",))


def test_info_reads_a_valid_config_only_folder(tmp_path: Path) -> None:
    """The counterpart of the failures above: the same path check accepts a real config."""
    folder = folder_with_config(tmp_path, FLASH_CONFIG.read_bytes())
    result = runner.invoke(app, ["model", "info", str(folder), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "config only"
