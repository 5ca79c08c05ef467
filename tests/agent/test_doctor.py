"""Detection logic of `dsv4 doctor`, with a fake Hugging Face cache in a temp dir."""

from __future__ import annotations

from pathlib import Path

from dsv4.agent import doctor
from dsv4.engine import hub


def _fake_snapshot(cache: Path, repo: str, rev: str, *, weights: bool = True) -> Path:
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    if weights:
        (snap / "model.safetensors.index.json").write_text("{}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(rev + "\n")
    return snap


def test_hf_cache_dir_follows_environment(tmp_path: Path) -> None:
    assert hub.hf_cache_dir({"HF_HUB_CACHE": str(tmp_path)}) == tmp_path
    assert hub.hf_cache_dir({"HF_HOME": str(tmp_path)}) == tmp_path / "hub"
    assert hub.hf_cache_dir({"HOME": str(tmp_path)}) == tmp_path / ".cache/huggingface/hub"


def test_finds_v4_snapshots_in_the_cache(tmp_path: Path) -> None:
    snap = _fake_snapshot(tmp_path, "deepseek-ai/DeepSeek-V4-Flash", "abc123")
    _fake_snapshot(tmp_path, "deepseek-ai/DeepSeek-V4-Pro", "def456", weights=False)
    _fake_snapshot(tmp_path, "someone/other-model", "0000")
    found = hub.find_checkpoints(env={}, cache=tmp_path)
    assert [(f.source, f.name) for f in found] == [
        ("hf-cache", "deepseek-ai/DeepSeek-V4-Flash"),
        ("hf-cache", "deepseek-ai/DeepSeek-V4-Pro"),
    ]
    assert found[0].path == snap and found[0].complete
    assert not found[1].complete


def test_model_flag_and_env_are_reported_first(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"")
    found = hub.find_checkpoints(model=str(folder), env={"DSV4_MODEL": "/nonexistent/x"},
                                 cache=tmp_path / "empty")  # fmt: skip
    assert [(f.source, f.complete) for f in found] == [("--model", True), ("DSV4_MODEL", False)]


def test_resolve_hf_id_never_downloads(tmp_path: Path) -> None:
    snap = _fake_snapshot(tmp_path, "deepseek-ai/DeepSeek-V4-Flash", "abc123")
    assert hub.resolve_model_path("deepseek-ai/DeepSeek-V4-Flash", cache=tmp_path) == snap
    try:
        hub.resolve_model_path("deepseek-ai/DeepSeek-V4-Pro", cache=tmp_path)
    except hub.CheckpointNotFound as exc:
        assert "never downloads" in str(exc)
    else:
        raise AssertionError("an id missing from the cache must raise")


def test_report_flags_missing_essentials(tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path)}
    checks = doctor.collect(env=env, cwd=tmp_path)
    assert doctor.missing_essentials(checks) == []
    checks = doctor.collect(model=str(tmp_path / "missing"), env=env, cwd=tmp_path)
    assert [c.name for c in doctor.missing_essentials(checks)] == ["model (--model)"]
    data = doctor.as_json(checks)
    assert data["ok"] is False and data["missing"] == ["model (--model)"]


def test_cached_v4_model_appears_in_report(tmp_path: Path) -> None:
    _fake_snapshot(tmp_path, "deepseek-ai/DeepSeek-V4-Flash", "abc123")
    checks = doctor.collect(env={"HF_HUB_CACHE": str(tmp_path)}, cwd=tmp_path)
    models = [c for c in checks if c.name.startswith("model")]
    assert [(c.name, c.value, c.ok) for c in models] == [
        ("model (hf-cache)", "deepseek-ai/DeepSeek-V4-Flash", True)
    ]


def test_reports_the_cpu_kernels_and_their_fallback(tmp_path: Path, monkeypatch) -> None:
    from dsv4.kernels import native

    check = doctor._cpu_kernels()
    assert check.ok and check.value.startswith("C") and not check.essential
    monkeypatch.setenv("DSV4_CACHE_DIR", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "no-such-compiler-dsv4")
    native.load.cache_clear()
    try:
        check = doctor._cpu_kernels()
    finally:
        native.load.cache_clear()
    assert not check.ok and check.value == "torch references"
    assert "no-such-compiler-dsv4" in check.detail
