"""Find DeepSeek-V4 checkpoints on this machine: a folder, or the local Hugging Face cache.

Nothing here downloads. A Hugging Face id (`deepseek-ai/DeepSeek-V4-Flash`) resolves to the
snapshot folder of the local hub cache (`models--deepseek-ai--DeepSeek-V4-Flash/snapshots/<rev>`,
the revision named by `refs/main` when present, else the newest snapshot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

V4_REPO_PREFIX = "deepseek-ai/DeepSeek-V4-"


class CheckpointNotFound(FileNotFoundError):
    """A model path or id that names no checkpoint on this machine."""


def hf_cache_dir(env: dict[str, str] | None = None) -> Path:
    """The hub cache folder, following the `huggingface_hub` environment variables."""
    env = dict(os.environ) if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path(env.get("HOME", "~")).expanduser() / ".cache"
    return base / "huggingface" / "hub"


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint folder and where it was found (`--model`, `DSV4_MODEL` or `hf-cache`)."""

    source: str
    name: str
    path: Path
    has_config: bool
    has_weights: bool

    @property
    def complete(self) -> bool:
        return self.has_config and self.has_weights


def _describe(source: str, name: str, path: Path) -> FoundCheckpoint:
    has_weights = (path / "model.safetensors.index.json").is_file() or any(
        path.glob("*.safetensors")
    )
    return FoundCheckpoint(source, name, path, (path / "config.json").is_file(), has_weights)


def snapshot_for(repo_id: str, cache: Path | None = None) -> Path | None:
    """The local snapshot folder of `repo_id` in the hub cache, or None."""
    cache = hf_cache_dir() if cache is None else cache
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text().strip()
        if (snapshots / rev).is_dir():
            return snapshots / rev
    candidates = sorted(
        (p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
    )
    return candidates[-1] if candidates else None


def resolve_model_path(path_or_id: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """A local checkpoint folder for a path or a Hugging Face id; never downloads."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    if path.exists():
        raise CheckpointNotFound(f"model path {text!r} is a file; expected a checkpoint folder")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        snap = snapshot_for(text, cache)
        if snap is not None:
            return snap
        where = hf_cache_dir() if cache is None else cache
        raise CheckpointNotFound(
            f"{text!r} is not in the local Hugging Face cache ({where}); dsv4 never downloads. "
            f"Fetch it first (e.g. `huggingface-cli download {text}`) or pass a folder."
        )
    raise CheckpointNotFound(f"model folder {text!r} does not exist")


def find_checkpoints(
    model: str | None = None,
    env: dict[str, str] | None = None,
    cache: Path | None = None,
) -> list[FoundCheckpoint]:
    """Every checkpoint dsv4 could use: `--model`, `DSV4_MODEL`, then V4 repos in the hub cache."""
    env = dict(os.environ) if env is None else env
    found: list[FoundCheckpoint] = []
    for source, value in (("--model", model), ("DSV4_MODEL", env.get("DSV4_MODEL"))):
        if not value:
            continue
        try:
            found.append(_describe(source, value, resolve_model_path(value, cache)))
        except CheckpointNotFound:
            found.append(FoundCheckpoint(source, value, Path(value), False, False))
    cache = hf_cache_dir(env) if cache is None else cache
    if cache.is_dir():
        for repo_dir in sorted(cache.glob("models--deepseek-ai--DeepSeek-V4-*")):
            repo_id = repo_dir.name[len("models--") :].replace("--", "/")
            snap = snapshot_for(repo_id, cache)
            if snap is not None:
                found.append(_describe("hf-cache", repo_id, snap))
    return found
