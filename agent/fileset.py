"""The set of repository files the indexer considers, and the rules that leave files out.

`list_files` asks git (`git ls-files` subprocesses) for tracked files plus untracked files
that no `.gitignore`, `.git/info/exclude` or global excludes file ignores, then applies the
`.dsv4ignore` files (gitignore syntax, also applied to tracked files). The remaining rules
are pure functions of a path or of a file's bytes, so they are tested without a repository:
`path_exclusion` (lock files, minified assets, vendored and generated paths) and
`content_exclusion` (binary sniffing, size cap, generated-file markers, minified text).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, PIPE

IGNORE_FILE = ".dsv4ignore"

# Lock files are long, machine-written and say nothing the manifest beside them doesn't.
_LOCK_NAMES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "poetry.lock",
        "Pipfile.lock",
        "pdm.lock",
        "uv.lock",
        "Cargo.lock",
        "Gemfile.lock",
        "composer.lock",
        "go.sum",
        "flake.lock",
        "mix.lock",
        "Podfile.lock",
        "packages.lock.json",
        "gradle.lockfile",
    }
)
_VENDOR_DIRS = frozenset(
    {"node_modules", "vendor", "vendors", "third_party", "third-party", "bower_components"}
)
_MINIFIED_SUFFIXES = (".min.js", ".min.css", ".min.mjs", ".js.map", ".css.map")
_GENERATED_GLOBS = (
    "*_pb2.py",
    "*_pb2_grpc.py",
    "*_pb2.pyi",
    "*.pb.go",
    "*.pb.cc",
    "*.pb.h",
    "*.generated.*",
    "*_generated.*",
    "*.g.dart",
    "*.designer.cs",
)
_GENERATED_NAME = re.compile("|".join(fnmatch.translate(g) for g in _GENERATED_GLOBS))
# Extensions that are binary whatever their bytes look like; sniffing catches the rest.
_BINARY_SUFFIXES = frozenset(
    (  # noqa: SIM905 - a list literal would run to 70 lines
        ".png .jpg .jpeg .gif .bmp .ico .webp .tif .tiff .psd .pdf .zip .gz .tgz .bz2 .xz .zst "
        ".7z .rar .tar .jar .war .whl .egg .so .dylib .dll .exe .o .a .lib .obj .pyc .pyo "
        ".class .wasm .bin .dat .npy .npz .pt .pth .ckpt .safetensors .onnx .pkl .pickle "
        ".parquet .arrow .sqlite .db .mp3 .mp4 .wav .ogg .flac .avi .mov .mkv .webm .ttf .otf "
        ".woff .woff2 .eot"
    ).split()
)
# Header markers that code generators write near the top of their output.
_GENERATED_MARKER = re.compile(
    r"@generated|DO NOT EDIT|Code generated .* DO NOT EDIT"
    r"|auto-?generated (?:file|code|by)|automatically generated (?:file|code)"
    r"|This file (?:is|was) (?:automatically )?generated",
    re.IGNORECASE,
)
_SNIFF_BYTES = 8192
_MINIFIED_LINE = 1000  # mean line length (chars) above which text is treated as minified


@dataclass(frozen=True)
class FileSetConfig:
    """Which files the index may hold."""

    max_bytes: int = 512 * 1024
    """Files larger than this are excluded whole (reason "over size cap")."""
    allow: tuple[str, ...] = ()
    """Glob patterns (matched against the repository-relative path) forced in past the path
    rules and the secret rules. Binary files and the size cap still apply."""

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"FileSetConfig.max_bytes must be positive, got {self.max_bytes}")

    def allows(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.allow)


@dataclass(frozen=True)
class Candidate:
    """One file git knows about (tracked, or untracked and not ignored)."""

    path: str
    """Repository-relative, POSIX separators."""
    blob: str | None
    """Git blob id when the work-tree file is known to match the index; None when the file is
    untracked or modified, and the caller must hash its content."""
    excluded: str | None = None
    """Reason when a rule that needs no content already leaves the file out."""


class RepositoryError(Exception):
    """The path given to the indexer is not a usable git work tree."""


def path_exclusion(path: str) -> str | None:
    """Reason to leave `path` out judging by its name alone, or None."""
    # String operations, not PurePosixPath: this runs for every file on every re-index.
    folders, _, name = path.rpartition("/")
    if name in _LOCK_NAMES:
        return "lock file"
    if folders and not _VENDOR_DIRS.isdisjoint(folders.split("/")):
        return "vendored"
    if name.endswith(_MINIFIED_SUFFIXES):
        return "minified asset"
    if _GENERATED_NAME.match(name):
        return "generated"
    if _suffix(name).lower() in _BINARY_SUFFIXES:
        return "binary"
    return None


def _suffix(name: str) -> str:
    """The file name's last extension, as `PurePosixPath.suffix` gives it."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def content_exclusion(data: bytes, config: FileSetConfig) -> str | None:
    """Reason to leave a file out judging by its bytes, or None (then it decodes as UTF-8)."""
    if len(data) > config.max_bytes:
        return f"over size cap ({len(data)} > {config.max_bytes} bytes)"
    if is_binary(data):
        return "binary"
    head = data[:2048].decode("utf-8", errors="replace")
    if _GENERATED_MARKER.search(head):
        return "generated"
    if is_minified(data):
        return "minified asset"
    return None


def is_binary(data: bytes) -> bool:
    """Content sniffing: a NUL byte in the head, or bytes that are not UTF-8 text."""
    if b"\x00" in data[:_SNIFF_BYTES]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def is_minified(data: bytes) -> bool:
    """Very long mean line length over a sizeable file: bundler or minifier output."""
    if len(data) < 4 * _MINIFIED_LINE:
        return False
    return len(data) / (data.count(b"\n") + 1) > _MINIFIED_LINE


def list_files(root: Path) -> list[Candidate]:
    """Tracked plus untracked-not-ignored files under `root`, sorted by path."""
    if not root.is_dir():
        raise RepositoryError(f"{root} is not a directory")
    # The two listings run side by side: each is a git start-up plus an index read.
    listing, changed = _ls_files(root, ("-s", "-o", "--exclude-standard"), ("-m",))
    modified = set(changed)
    candidates: dict[str, Candidate] = {}
    for entry in listing:
        path, blob, reason = _parse_entry(entry)
        if path in modified:
            blob = None
        candidates[path] = Candidate(path, blob, reason or path_exclusion(path))
    if any(p.rpartition("/")[2] == IGNORE_FILE for p in candidates):
        (ignored,) = _ls_files(root, ("-c", "-o", "-i", f"--exclude-per-directory={IGNORE_FILE}"))
        for path in ignored:
            if path in candidates:
                candidates[path] = Candidate(path, candidates[path].blob, IGNORE_FILE)
    return [candidates[p] for p in sorted(candidates)]


_STAGED = re.compile(r"^(\d{6}) ([0-9a-f]{40,64}) \d\t(.*)$", re.DOTALL)


def _parse_entry(entry: str) -> tuple[str, str | None, str | None]:
    """(path, blob, reason) from one `ls-files -s -o` entry; untracked entries are bare paths."""
    m = _STAGED.match(entry)
    if m is None:
        return entry, None, None
    mode, blob, path = m.groups()
    if mode == "160000":
        return path, blob, "submodule"
    if mode == "120000":
        return path, blob, "symlink"
    return path, blob, None


def _ls_files(root: Path, *arg_lists: tuple[str, ...]) -> list[list[str]]:
    """Paths from `git ls-files -z ARGS` in `root`, one list per ARGS, run concurrently.

    Plain subprocesses: importing gitpython costs ~0.1 s, a third of a warm re-index. In a
    subfolder of a work tree, ls-files lists paths relative to it.
    """
    procs = [
        subprocess.Popen(
            ["git", "ls-files", "-z", *args], cwd=root, stdout=PIPE, stderr=PIPE, stdin=DEVNULL
        )
        for args in arg_lists
    ]
    outputs = [proc.communicate() for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RepositoryError(
                f"{root} is not inside a git work tree (run `git init` there first): "
                f"{err.decode('utf-8', 'replace').strip()}"
            )
    return [_split(out.decode("utf-8", "surrogateescape")) for out, _ in outputs]


def _split(out: str) -> list[str]:
    return [p for p in out.split("\0") if p]
