"""The indexer end to end on real temporary git repositories."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from dsv4.agent import index_cache, indexer
from dsv4.agent.fileset import FileSetConfig
from dsv4.agent.index_cache import CacheError
from dsv4.agent.indexer import DEFAULT_BUDGET, MODEL_CONTEXT, IndexConfig, build_index
from dsv4.agent.packer import outline_chunk
from dsv4.engine.tokenizer import get_tokenizer

_GH = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
_PW = "q8Zr2Lm9Xv4Tn7Pw1Ks6"
_ENV_VALUE = "Zx8qP2mLk9Rt4vWc-env-only"


def _repo(root: Path) -> Path:
    files = {
        "core/engine.py": (
            "class Engine:\n"
            "    def start(self):\n"
            "        return 1\n\n"
            "def make_engine():\n"
            "    return Engine()\n"
        ),
        "core/util.py": "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n",
        "app/settings.py": f'GITHUB = "{_GH}"\ndb_password = "{_PW}"\nDEBUG = True\n',
        "README.md": "# Demo\n\nUses make_engine.\n",
        ".env": f"SECRET={_ENV_VALUE}\n",
        "package-lock.json": '{"lockfileVersion": 3}\n',
        "img/logo.dat": "fine\n",
        "assets/blob.txt": "binary\x00inside\n",
    }
    for i in range(5):
        files[f"app/user{i}.py"] = (
            f"from core.engine import make_engine\n\ndef run{i}():\n"
            f"    e = make_engine()\n    return e.start() + clamp({i}, 0, 3)\n"
        )
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    _git(root, "add", "-A")
    _git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return root


def _write_old(path: Path, text: str) -> None:
    """Write and backdate: the indexer distrusts the stat of files written moments ago."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _repo(tmp_path / "repo")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _modes(index) -> dict[str, str]:
    return {f.path: f.mode for f in index.files}


def test_exact_tokens_secrets_and_exclusions(repo: Path, cache: Path) -> None:
    index = build_index(repo, cache_dir=cache)
    assert index.total_tokens == get_tokenizer().count(index.text)
    assert index.budget == DEFAULT_BUDGET < MODEL_CONTEXT
    for secret in (_GH, _PW, _ENV_VALUE):
        assert secret not in index.text
    assert "DEBUG = True" in index.text  # the rest of the redacted file is kept
    reasons = {f.path: f.reason for f in index.files if f.mode == "excluded"}
    assert reasons == {
        ".env": "secret: env-file",
        "package-lock.json": "lock file",
        "img/logo.dat": "binary",  # by extension
        "assets/blob.txt": "binary",  # by content
    }
    withheld = {(w.path, w.kind, w.action) for w in index.withheld}
    assert withheld == {
        (".env", "env-file", "withheld"),
        ("app/settings.py", "github-token", "redacted"),
        ("app/settings.py", "secret-assignment", "redacted"),
    }
    assert '<file path="core/engine.py" mode="full">\nclass Engine:' in index.text


def test_allow_entry_forces_a_secret_file_in(repo: Path, cache: Path) -> None:
    config = IndexConfig(fileset=FileSetConfig(allow=(".env", "package-lock.json")))
    index = build_index(repo, cache_dir=cache, config=config)
    assert _modes(index)[".env"] == "full" and _ENV_VALUE in index.text
    assert _modes(index)["package-lock.json"] == "full"
    assert _modes(index)["assets/blob.txt"] == "excluded"  # binary stays out regardless


def test_ranking_puts_the_hub_last_and_focus_overrides(repo: Path, cache: Path) -> None:
    index = build_index(repo, cache_dir=cache)
    ranked = [f.path for f in index.files if f.mode != "excluded"]
    assert ranked[0] == "core/engine.py"
    assert ranked.index("core/util.py") < ranked.index("app/user3.py")
    assert index.text.rindex('<file path="core/engine.py"') > index.text.rindex(
        '<file path="app/user3.py"'
    )
    focused = build_index(repo, cache_dir=cache, task="the bug is in user3.py")
    assert [f.path for f in focused.files][0] == "app/user3.py"
    assert focused.text.rstrip().endswith("</file>\n</repository>".rstrip())
    last_chunk = focused.text.rsplit("<file ", 1)[1]
    assert last_chunk.startswith('path="app/user3.py"')


def test_deterministic_with_and_without_cache(repo: Path, tmp_path: Path) -> None:
    a = build_index(repo, cache_dir=tmp_path / "c1")
    b = build_index(repo, cache_dir=tmp_path / "c1")  # warm
    c = build_index(repo, cache_dir=tmp_path / "c2")  # cold, other cache
    assert a.text == b.text == c.text
    assert a.total_tokens == b.total_tokens == c.total_tokens
    assert b.stats.files_analysed == 0 and b.stats.tokens_encoded == 0


def test_one_file_change_rereads_one_file(repo: Path, cache: Path) -> None:
    first = build_index(repo, cache_dir=cache)
    assert first.stats.files_analysed == first.stats.files_read > 0
    _write_old(repo / "core" / "util.py", "def clamp(x, lo, hi):\n    return x\n")
    _write_old(repo / "notes.txt", "untracked note\n")
    second = build_index(repo, cache_dir=cache)
    assert (second.stats.files_read, second.stats.files_analysed) == (2, 2)
    third = build_index(repo, cache_dir=cache)  # untracked file known by its stat now
    assert (third.stats.files_read, third.stats.files_analysed) == (0, 0)
    _write_old(repo / "notes.txt", "edited note\n")
    fourth = build_index(repo, cache_dir=cache)
    assert (fourth.stats.files_read, fourth.stats.files_analysed) == (1, 1)
    assert "edited note" in fourth.text
    assert fourth.total_tokens == get_tokenizer().count(fourth.text)


def test_budget_is_never_exceeded_and_degrades(repo: Path, cache: Path) -> None:
    full = build_index(repo, cache_dir=cache)
    seen_modes: set[str] = set()
    for budget in (full.total_tokens, full.total_tokens * 2 // 3, full.total_tokens // 3, 150, 60):
        index = build_index(repo, cache_dir=cache, budget=budget)
        assert index.total_tokens <= budget
        assert index.total_tokens == get_tokenizer().count(index.text)
        seen_modes |= set(_modes(index).values())
    assert {"full", "outline", "tree"} <= seen_modes
    tight = build_index(repo, cache_dir=cache, budget=full.total_tokens // 3)
    modes = _modes(tight)
    assert modes["core/engine.py"] == "full"  # the best-ranked file keeps its text
    assert "outline" in modes.values() or "tree" in modes.values()


def test_prefix_is_stable_when_a_low_ranked_file_changes(repo: Path, cache: Path) -> None:
    budget = build_index(repo, cache_dir=cache).total_tokens // 3
    before = build_index(repo, cache_dir=cache, budget=budget)
    assert _modes(before)["README.md"] in ("tree", "outline")
    (repo / "README.md").write_text("# Demo\n\nUses make_engine, now with more words.\n")
    after = build_index(repo, cache_dir=cache, budget=budget)
    assert after.text == before.text  # shown by name or headings only: nothing moved
    # A body edit in a full-text file leaves everything before its chunk byte-identical.
    full_before = build_index(repo, cache_dir=cache)
    path = "app/user2.py"
    (repo / path).write_text((repo / path).read_text() + "# a comment\n")
    full_after = build_index(repo, cache_dir=cache)
    start = full_before.text.index(f'<file path="{path}"')
    assert full_after.text[:start] == full_before.text[:start]
    assert full_after.text != full_before.text


def test_cache_folder_inside_the_work_tree_is_refused(repo: Path) -> None:
    with pytest.raises(CacheError, match="inside the indexed work tree"):
        build_index(repo, cache_dir=repo / ".cache")


def test_default_cache_dir_honours_the_environment(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSV4_CACHE_DIR", str(tmp_path / "envcache"))
    build_index(repo)
    assert list((tmp_path / "envcache").glob("*.cache"))


def test_a_file_rewritten_moments_ago_is_rehashed(repo: Path, cache: Path) -> None:
    (repo / "fresh.txt").write_text("one\n")
    build_index(repo, cache_dir=cache)
    (repo / "fresh.txt").write_text("two\n")  # same size, possibly the same mtime tick
    index = build_index(repo, cache_dir=cache)
    assert "two\n" in index.text and "one\n" not in index.text


def test_tight_budget_packs_the_same_whatever_the_cache_holds(repo: Path, tmp_path: Path) -> None:
    full = build_index(repo, cache_dir=tmp_path / "probe").total_tokens
    modes: set[str] = set()
    for i, budget in enumerate(range(full // 5, full, full // 9)):
        cold = build_index(repo, cache_dir=tmp_path / f"a{i}", budget=budget)
        build_index(repo, cache_dir=tmp_path / f"b{i}", budget=budget // 2)  # other outlines
        warm = build_index(repo, cache_dir=tmp_path / f"b{i}", budget=budget)
        assert warm.text == cold.text and warm.total_tokens == cold.total_tokens <= budget
        modes |= set(_modes(cold).values())
    assert "outline" in modes


def test_deleted_tracked_file_is_reported_not_packed(repo: Path, cache: Path) -> None:
    (repo / "core" / "util.py").unlink()
    index = build_index(repo, cache_dir=cache)
    entry = next(f for f in index.files if f.path == "core/util.py")
    assert (entry.mode, entry.reason) == ("excluded", "deleted in the work tree")
    assert "def clamp" not in index.text


_PLANTED = {
    "aws-access-key-id": "AKIA" + "Q7ZP3LMX9TKW4RNB",
    "github-token": "ghp_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8",
    "slack-token": "xoxp-" + "2048-7391-q8Zr2Lm9Xv4Tn",
    "google-api-key": "AIza" + "SyD3-q8Zr2Lm9Xv4Tn7Pw1Ks6Ab5Cd0Ef9G",
    "stripe-key": "sk_live_" + "q8Zr2Lm9Xv4Tn7Pw1Ks6Ab5C",
    "openai-anthropic-key": "sk-ant-" + "q8Zr2Lm9Xv4Tn7Pw1Ks6Ab5Cd0Ef9Gh3Ij",
    "gitlab-token": "glpat-" + "q8Zr2Lm9Xv4Tn7Pw1Ks6",
    "url-credentials": "Wq7Lp2Zr9Xv4Tn8Ks",
    "secret-assignment": "Mv3Pq8Lz1Rt6Yw9Hc",
    "private-key": "MIIEowIBAAKCAQEAq8Zr2Lm9Xv4Tn7Pw1Ks6",
}


def test_no_planted_secret_reaches_the_packed_text(tmp_path: Path) -> None:
    p = _PLANTED
    source = (
        f'A = "{p["aws-access-key-id"]}"\nB = "{p["github-token"]}"\n'
        f'C = "{p["slack-token"]}"\nD = "{p["google-api-key"]}"\n'
        f'E = "{p["stripe-key"]}"\nF = "{p["openai-anthropic-key"]}"\n'
        f'G = "{p["gitlab-token"]}"\n'
        f'H = "redis://cache:{p["url-credentials"]}@cache.internal:6379/0"\n'
        f'client_secret = "{p["secret-assignment"]}"\n'
        f'KEY = """-----BEGIN EC PRIVATE KEY-----\n{p["private-key"]}\n'
        '-----END EC PRIVATE KEY-----"""\n'
    )
    root = tmp_path / "r"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "config.py").write_text(source)
    (root / "deploy.pem").write_text(f"-----BEGIN PRIVATE KEY-----\n{p['private-key']}\n")
    index = build_index(root, cache_dir=tmp_path / "cache")
    cached = b"".join(f.read_bytes() for f in (tmp_path / "cache").glob("*.cache"))
    assert cached  # the cache was written, and holds redacted text only
    for value in p.values():
        assert value not in index.text
        assert value.encode() not in cached
    kinds = {w.kind for w in index.withheld if w.path == "config.py"}
    assert kinds == set(p)
    assert ("deploy.pem", "key-file", "withheld") in {
        (w.path, w.kind, w.action) for w in index.withheld
    }


def test_a_small_change_is_counted_without_the_official_tokenizer(
    repo: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_index(repo, cache_dir=cache)
    # As in a fresh process: the official tokenizer is not loaded, so the edit is counted
    # by the in-process counter, whose tables then sit in the cache folder.
    monkeypatch.setattr(indexer, "_official_loaded", lambda: None)
    monkeypatch.setattr(indexer, "get_official_tokenizer", _refuse_official)
    _write_old(repo / "core" / "util.py", "def clamp(x, lo, hi):\n    return min(x, 99) + 1\n")
    index = build_index(repo, cache_dir=cache)
    assert index.stats.files_analysed == 1 and index.stats.tokens_encoded > 0
    assert list(cache.glob("*.marshal"))
    monkeypatch.undo()
    assert index.total_tokens == get_tokenizer().count(index.text)


def _refuse_official():
    raise AssertionError("the official tokenizer was loaded for a one-file change")


def test_a_tight_budget_counts_only_what_it_may_show(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo")
    for i in range(60):
        body = "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(150))
        (root / "gen" / f"m{i:02}.py").parent.mkdir(exist_ok=True)
        (root / "gen" / f"m{i:02}.py").write_text(body)
    whole = build_index(root, cache_dir=tmp_path / "whole")
    budget = whole.total_tokens // 8  # far past `_COUNT_ALL_OVERFLOW` budgets
    tight = build_index(root, cache_dir=tmp_path / "tight", budget=budget)
    assert tight.total_tokens == get_tokenizer().count(tight.text) <= budget
    assert tight.stats.tokens_encoded < whole.stats.tokens_encoded // 2
    # A later run with the whole budget counts the rest and packs what a cold run packs.
    again = build_index(root, cache_dir=tmp_path / "tight")
    assert again.text == whole.text and again.total_tokens == whole.total_tokens


def test_an_edit_that_keeps_the_graph_reuses_the_ranking(repo: Path, cache: Path) -> None:
    build_index(repo, cache_dir=cache)
    engine = repo / "core" / "engine.py"
    _write_old(engine, engine.read_text() + "# a comment changes no definition or reference\n")
    kept = build_index(repo, cache_dir=cache)
    assert kept.stats.files_analysed == 1 and kept.stats.ranked_from_cache
    _write_old(engine, engine.read_text() + "def brand_new():\n    return clamp(1, 0, 2)\n")
    changed = build_index(repo, cache_dir=cache)
    assert not changed.stats.ranked_from_cache


def test_a_cold_run_counts_in_a_background_process_exactly(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _background_run(monkeypatch)
    index = build_index(repo, cache_dir=tmp_path / "bg")
    monkeypatch.undo()
    assert index.stats.files_analysed > 5 and index.stats.tokens_encoded > 0
    assert index.total_tokens == get_tokenizer().count(index.text)
    assert index.text == build_index(repo, cache_dir=tmp_path / "fg").text


def test_files_parsed_in_the_background_get_the_same_records(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _background_run(monkeypatch, child_parses=True)
    # Everything, the frame and tree lines included, is counted in the child.
    monkeypatch.setattr(indexer.token_counter, "load", _refuse_counter)
    split = build_index(repo, cache_dir=tmp_path / "split")
    monkeypatch.undo()
    assert split.stats.files_parsed_in_background > 0
    alone = build_index(repo, cache_dir=tmp_path / "alone")
    assert alone.stats.files_parsed_in_background == 0
    assert split.text == alone.text and split.total_tokens == alone.total_tokens
    split_records, alone_records = _records(tmp_path / "split"), _records(tmp_path / "alone")
    # The background process also counted the outlines up front, exactly.
    counted = {p: r for p, r in split_records.items() if r.outline and r.outline_tokens >= 0}
    assert counted
    for path, rec in counted.items():
        assert rec.outline_tokens == get_tokenizer().count(outline_chunk(path, rec.outline))
    unset = {p: replace(r, outline_tokens=-1 if r.outline else 0) for p, r in split_records.items()}
    assert unset == alone_records


def test_files_neither_side_parsed_are_parsed_after_the_wait(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the two sides meet, both may step back from the same file: it is parsed here
    once the background process is done. Here the child is given no files at all."""
    _background_run(monkeypatch, child_parses=True)
    monkeypatch.setattr(indexer.background.BackgroundAnalysis, "parse", lambda self, files: None)
    met = build_index(repo, cache_dir=tmp_path / "met")
    monkeypatch.undo()
    assert met.stats.files_parsed_in_background == 0
    alone = build_index(repo, cache_dir=tmp_path / "alone")
    assert met.text == alone.text and met.total_tokens == alone.total_tokens
    assert _records(tmp_path / "met").keys() == _records(tmp_path / "alone").keys()
    assert all(r.tags is not None for r in _records(tmp_path / "met").values() if not r.excluded)


def _background_run(
    monkeypatch: pytest.MonkeyPatch, *, child_parses: bool = False, refuse_official: bool = True
) -> None:
    """As in a fresh process (the official tokenizer not loaded), with a repository large
    enough to count in the background. `child_parses`: this process stops parsing after
    two files, as if the child had been quicker, so the child parses the rest."""
    monkeypatch.setattr(indexer, "_official_loaded", lambda: None)
    if refuse_official:
        monkeypatch.setattr(indexer, "get_official_tokenizer", _refuse_official)
    monkeypatch.setattr(indexer, "_SMALL_CHARS", 0)
    if child_parses:
        claim = indexer.background.Pending.claim
        monkeypatch.setattr(
            indexer.background.Pending, "claim", lambda self, n: n < 2 and claim(self, n)
        )


def _refuse_counter(*args):
    raise AssertionError("the in-process counter was loaded in a cold background run")


def _records(cache_dir: Path) -> dict:
    (path,) = cache_dir.glob("*.cache")
    return index_cache.load(path).records


def test_a_failed_background_process_is_redone_here(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _background_run(monkeypatch, child_parses=True, refuse_official=False)

    finish = indexer.background.BackgroundAnalysis.result

    def broken(self):
        finish(self)  # the child ends; its answer is then lost
        raise indexer.background.BackgroundError("background analysis exited 1: boom")

    monkeypatch.setattr(indexer.background.BackgroundAnalysis, "result", broken)
    failed = build_index(repo, cache_dir=tmp_path / "failed")
    assert failed.stats.files_parsed_in_background == 0  # what it parsed, parsed here again
    monkeypatch.undo()
    assert failed.total_tokens == get_tokenizer().count(failed.text)
    assert failed.text == build_index(repo, cache_dir=tmp_path / "fine").text
