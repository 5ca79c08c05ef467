"""`dsv4 index`: table, --print and --json on a real temporary repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4.agent.indexer import build_index
from dsv4.cli.app import app
from dsv4.engine.tokenizer import get_tokenizer

_SECRET = "q8Zr2Lm9Xv4Tn7Pw1Ks6"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "main.py").write_text("from lib import helper\n\ndef main():\n    helper()\n")
    (root / "lib.py").write_text(f'api_token = "{_SECRET}"\n\ndef helper():\n    return 1\n')
    (root / "yarn.lock").write_text("# lock\n")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSV4_CACHE_DIR", str(tmp_path / "cache"))


def test_json_has_totals_and_every_file(repo: Path) -> None:
    result = CliRunner().invoke(app, ["index", str(repo), "--json", "--budget", "5000"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["budget"] == 5000 and data["elapsed_s"] >= 0
    files = {f["path"]: f for f in data["files"]}
    assert set(files) == {"main.py", "lib.py", "yarn.lock"}
    assert files["yarn.lock"] == {
        "path": "yarn.lock",
        "mode": "excluded",
        "tokens": 0,
        "reason": "lock file",
    }
    assert {f["mode"] for f in data["files"]} <= {"full", "outline", "tree", "excluded"}
    packed = build_index(repo, budget=5000).text
    assert data["total_tokens"] == get_tokenizer().count(packed)
    assert data["withheld"][0]["kind"] == "secret-assignment"


def test_print_writes_exactly_the_packed_text(repo: Path) -> None:
    result = CliRunner().invoke(app, ["index", str(repo), "--print"])
    assert result.exit_code == 0
    assert result.stdout == build_index(repo).text
    assert _SECRET not in result.stdout


def test_table_reports_groups_top_files_and_secrets(repo: Path) -> None:
    result = CliRunner().invoke(app, ["index", str(repo)], terminal_width=120)
    assert result.exit_code == 0, result.output
    for word in ("full", "outline", "tree", "excluded", "lib.py", "secret-assignment"):
        assert word in result.stdout


def test_bad_path_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["index", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
