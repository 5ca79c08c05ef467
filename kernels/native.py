"""CPU kernels written in C (`kernels/csrc/*.c`), compiled on first use and loaded with ctypes.

Torch dispatches each CPU op separately (a few microseconds each), and a decoded token is
~10,000 small ops, so on CPU the per-op cost, not the arithmetic, sets the engine's speed.
The C kernels do a whole step (a GEMV with its activation quantization, a Sinkhorn, one
token's attention) in one call, with the same numerics as the torch references beside them.

Each source file becomes one shared library, built with the system C compiler (`$CC`, else
`cc`) for this machine's instruction set (`-march=native`) into a cache folder
(`$DSV4_CACHE_DIR`, else `$XDG_CACHE_HOME/dsv4`, else `~/.cache/dsv4`), under a name that
hashes the source (with the shared headers), the flags, the compiler and the CPU's feature
flags, so an edited source or another CPU gets its own build. A build writes a temporary
file and renames it into place, so concurrent first uses never load a half-written library.
Without a compiler, or when a build fails, `library` returns None once with a warning, and
the callers keep their torch references: the same results, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_SRC = Path(__file__).with_name("csrc")
# -ffp-contract=off: no fused multiply-adds unless a kernel asks for one, so elementwise
# steps round like the torch references' separate ops.
_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11", "-fno-math-errno",
          "-fopenmp-simd", "-ffp-contract=off", "-Wall",
          "-Werror=implicit-function-declaration")  # fmt: skip
_BUILD_TIMEOUT_S = 120


class NativeBuildError(RuntimeError):
    """A C kernel source did not compile (the message holds the compiler's output)."""


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if env := os.environ.get("DSV4_CACHE_DIR"):
        return Path(env) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsv4" / "native"


def compiler() -> str | None:
    """The C compiler's path (`$CC`, else `cc`), or None when there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


@functools.lru_cache(maxsize=1)
def _machine_key() -> str:
    """Compiler version and CPU features: what `-march=native` builds for."""
    cc = compiler() or ""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        version = ""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return version + "\n" + flags


def flags() -> tuple[str, ...]:
    """Compiler flags: the fixed ones, then `$DSV4_NATIVE_CFLAGS` (split on spaces; e.g.
    `-mno-avx512f` builds the portable fallbacks of the vector code)."""
    return _FLAGS + tuple(os.environ.get("DSV4_NATIVE_CFLAGS", "").split())


KERNELS = ("gemm", "amx", "rows", "route", "compress", "indexer", "mhc", "moe", "quant",
           "sparse_attn")  # fmt: skip
"""Every library of `csrc/` (one per .c file)."""


def _target(name: str) -> tuple[Path, Path]:
    """(source, library path in the cache) of kernel `name`."""
    src = _SRC / f"{name}.c"
    text = src.read_bytes() + b"".join(h.read_bytes() for h in sorted(_SRC.glob("*.h")))
    key = hashlib.sha256(text + " ".join(flags()).encode() + _machine_key().encode())
    return src, cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"


def prebuild(names: tuple[str, ...] = KERNELS) -> list[str]:
    """Build the libraries that are not cached yet, in parallel (one compiler per core), with
    one line on stderr: a fresh install compiles ~15 CPU-seconds of C, which would otherwise
    stall a model's first forward pass silently. Returns the names built; build errors are
    left for `library` to report."""
    missing = [n for n in names if not _target(n)[1].exists()]
    if not missing or compiler() is None:
        return []
    print(f"dsv4: compiling {len(missing)} CPU kernel libraries for this machine "
          f"(first use; cached in {cache_dir()})", file=sys.stderr, flush=True)  # fmt: skip

    def attempt(name: str) -> bool:
        try:
            build(name)
            return True
        except (NativeBuildError, OSError, subprocess.SubprocessError):
            return False

    with ThreadPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
        done = list(pool.map(attempt, missing))
    return [n for n, ok in zip(missing, done, strict=True) if ok]


def build(name: str) -> Path:
    """Compile `csrc/<name>.c` (if not built yet) and return the library's path.

    Raises `NativeBuildError` when there is no compiler or the source does not compile."""
    src, out = _target(name)
    if out.exists():
        return out
    cc = compiler()
    if cc is None:
        raise NativeBuildError(f"no C compiler (looked for {os.environ.get('CC', 'cc')!r})")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cc, *flags(), "-I", str(_SRC), "-o", tmp, str(src), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        if res.returncode:
            raise NativeBuildError(f"{src.name}: {cc} failed:\n{res.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def load(name: str) -> ctypes.CDLL:
    """The loaded library of `csrc/<name>.c`, built if needed; raises when it cannot be."""
    try:
        return ctypes.CDLL(str(build(name)))
    except OSError as exc:  # a library the loader rejects
        raise NativeBuildError(f"{name}: cannot load the built library: {exc}") from exc


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """`load(name)`, or None (with one warning) when it cannot be built here: callers then
    run their torch reference."""
    try:
        return load(name)
    except (NativeBuildError, OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"dsv4: native CPU kernels '{name}' unavailable, using torch: {exc}",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return None


def ptr(t: torch.Tensor) -> int:
    """The data address of a contiguous CPU tensor, to pass as a `c_void_p` argument."""
    if not (t.is_cpu and t.is_contiguous()):
        raise ValueError(
            f"native kernel operand must be a contiguous CPU tensor: {t.device}, "
            f"strides {t.stride()} for shape {tuple(t.shape)}"
        )
    return t.data_ptr()


def declare(lib: ctypes.CDLL, fn: str, *argtypes) -> ctypes._CFuncPtr:
    """`lib.fn` with its argument types set and no return value (the kernels write outputs)."""
    f = getattr(lib, fn)
    f.argtypes, f.restype = list(argtypes), None
    return f


ACT_KIND = {torch.float32: 0, torch.bfloat16: 1}
"""Activation dtype -> the kernels' `bf16` flag (bf16 tensors are passed as uint16 bits)."""

P = ctypes.c_void_p
"""Pointer argument type (pass `ptr(tensor)`)."""
I64 = ctypes.c_int64
F32 = ctypes.c_float
