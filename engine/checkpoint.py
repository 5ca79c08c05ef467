"""A DeepSeek-V4 safetensors checkpoint on disk: index, shard headers, tensors read on demand.

`open_checkpoint` reads `config.json`, `model.safetensors.index.json` (or the lone
`*.safetensors` files) and every shard's header; no tensor data is read until `get`.
`verify` compares what is on disk with the inventory the config implies (SPEC §3.2) and
lists every problem by file and tensor name; `check` raises them as one `CheckpointError`.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path

import torch

from dsv4.engine import hugepages
from dsv4.engine.config import ModelArgs, load_config
from dsv4.engine.errors import CheckpointError
from dsv4.engine.hub import CheckpointNotFound, resolve_model_path
from dsv4.engine.inventory import ST_DTYPE_NAMES, TensorSpec, expected_tensors

__all__ = ["Checkpoint", "CheckpointError", "TensorSpec", "open_checkpoint"]

INDEX_FILE = "model.safetensors.index.json"
_TORCH_DTYPES: dict[str, torch.dtype] = {v: k for k, v in ST_DTYPE_NAMES.items()} | {
    "F16": torch.float16,
    "F64": torch.float64,
    "I32": torch.int32,
    "I16": torch.int16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E5M2": torch.float8_e5m2,
}
# REF's convert.py skips these MTP names and vLLM maps them; Flash has none, but a
# checkpoint that carries them is still valid (SPEC §3.2).
_TOLERATED_MTP = (".emb.", ".head.weight")
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class _Entry:
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


@dataclass
class _Shard:
    """One safetensors file: its parsed header, or why it cannot be used."""

    file: str
    size: int = 0
    tensors: dict[str, _Entry] = field(default_factory=dict)
    error: str | None = None  # missing / unreadable / malformed header
    problems: list[str] = field(default_factory=list)  # truncation, bad offsets


def _read_header(path: Path, file: str) -> _Shard:
    shard = _Shard(file)
    try:
        shard.size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"file is {len(raw)} bytes, shorter than the 8-byte header size")
            (n,) = struct.unpack("<Q", raw)
            if n > min(_MAX_HEADER, shard.size - 8):
                raise ValueError(f"header length {n} exceeds the file size {shard.size}")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        shard.error = f"{file}: shard file is missing"
        return shard
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        shard.error = (
            f"{file}: unreadable safetensors header ({exc}); the file is truncated or corrupt"
        )
        return shard
    _parse_entries(shard, header, data_start=8 + n)
    return shard


def _parse_entries(shard: _Shard, header: dict, data_start: int) -> None:
    truncated = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            entry = _Entry(
                info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end
            )
        except (KeyError, TypeError, ValueError):
            shard.problems.append(f"{shard.file}: tensor {name}: malformed header entry {info!r}")
            continue
        shard.tensors[name] = entry
        dtype = _TORCH_DTYPES.get(entry.dtype)
        if dtype is None:
            shard.problems.append(f"{shard.file}: tensor {name}: unknown dtype {entry.dtype}")
        elif entry.end - entry.begin != _numel(entry.shape) * dtype.itemsize:
            shard.problems.append(
                f"{shard.file}: tensor {name}: data_offsets span "
                f"{entry.end - entry.begin} bytes, shape {list(entry.shape)} "
                f"{entry.dtype} needs {_numel(entry.shape) * dtype.itemsize}"
            )
        if entry.end > shard.size:
            truncated.append(name)
    if truncated:
        need = max(shard.tensors[n].end for n in truncated)
        shard.problems.append(
            f"{shard.file}: truncated: the header needs {need} bytes, the file "
            f"has {shard.size}; unreadable tensors: {_names(truncated)}"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


class Checkpoint:
    """An opened checkpoint folder. Use `open_checkpoint` to build one."""

    def __init__(
        self,
        path: Path,
        args: ModelArgs,
        weight_map: dict[str, str] | None,
        shards: dict[str, _Shard],
        index_total: int | None,
    ) -> None:
        self.path = path
        self.args = args
        self._weight_map = weight_map  # None: no index file (single-file checkpoint)
        self._shards = shards
        self._index_total = index_total
        self._where: dict[str, str] = {}  # tensor -> shard holding it (first one wins)
        for shard in shards.values():
            for name in shard.tensors:
                self._where.setdefault(name, shard.file)
        self._files: dict[str, FileIO] = {}  # open shard files, by name

    # -- lookup ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every tensor stored in the shards (header order, shard by shard)."""
        return list(self._where)

    def spec(self, name: str) -> TensorSpec:
        """Shape, dtype and shard of a stored tensor, from the headers (no data read)."""
        entry, file = self._entry(name)
        return TensorSpec(entry.shape, _TORCH_DTYPES[entry.dtype], file)

    def get(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """The stored tensor in its stored dtype: a private copy read from the shard file.

        The bytes are read straight into the tensor's own buffer (no memory map, no
        intermediate copy), so loading holds each tensor once: RSS grows by the tensor's size,
        and the file's pages stay in the page cache, which RSS does not count.
        """
        entry, file = self._entry(name)
        dtype = _TORCH_DTYPES.get(entry.dtype)
        shard = self._shards[file]
        if dtype is None or entry.end > shard.size or shard.error:
            raise CheckpointError(
                f"{self.path / file}: tensor {name} cannot be read "
                f"({shard.error or 'truncated shard or unknown dtype'})"
            )
        out = hugepages.empty(entry.shape, dtype)  # advised before the read touches it
        if entry.end > entry.begin:
            self._read_into(file, name, entry.begin, out)
        if device is not None and torch.device(device).type != "cpu":
            return out.to(device)
        return out

    def _read_into(self, file: str, name: str, offset: int, out: torch.Tensor) -> None:
        """Fill the contiguous CPU tensor `out` with the file's bytes from `offset`."""
        nbytes = out.numel() * out.element_size()
        view = memoryview((ctypes.c_char * nbytes).from_address(out.data_ptr())).cast("B")
        f, done = self._file(file), 0
        f.seek(offset)
        while done < nbytes:
            got = f.readinto(view[done:])  # unbuffered: the OS writes into the tensor
            if not got:
                raise CheckpointError(
                    f"{self.path / file}: tensor {name}: the file ended after {done} of "
                    f"{nbytes} bytes (truncated while open?)"
                )
            done += got

    def _entry(self, name: str) -> tuple[_Entry, str]:
        file = self._where.get(name)
        if file is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r} in any shard")
        return self._shards[file].tensors[name], file

    def _file(self, file: str) -> FileIO:
        if file not in self._files:
            # unbuffered, closed in close()
            self._files[file] = open(self.path / file, "rb", buffering=0)  # noqa: SIM115
        return self._files[file]

    def close(self) -> None:
        """Close the shard files (tensors already returned by `get` stay valid: they are
        copies)."""
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- verification ------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Every problem against the config's inventory; each message names file and tensor."""
        problems = self._shard_problems() + self._index_problems()
        expected = expected_tensors(self.args)
        for name, want in expected.items():
            if name not in self._where:
                problems.append(
                    f"missing tensor {name} (expected {_fmt(want)})" + self._listed_in(name)
                )
                continue
            got = self.spec(name)
            if got.shape != want.shape:
                problems.append(
                    f"{got.file}: tensor {name}: shape {list(got.shape)}, "
                    f"expected {list(want.shape)}"
                )
            if got.dtype != want.dtype:
                problems.append(
                    f"{got.file}: tensor {name}: dtype {_st(got.dtype)}, "
                    f"expected {ST_DTYPE_NAMES[want.dtype]}"
                )
        for name, file in self._where.items():
            if name not in expected and not _tolerated(name):
                problems.append(
                    f"{file}: unexpected tensor {name} (not in the inventory of "
                    f"{self.path / 'config.json'})"
                )
        # a wrong total is only news when nothing above already explains it
        return problems or self._total_size_problem()

    def check(self) -> None:
        """Raise one `CheckpointError` listing every problem `verify` finds."""
        problems = self.verify()
        if problems:
            listing = "\n".join(f"  - {p}" for p in problems)
            raise CheckpointError(
                f"{self.path}: {len(problems)} problem(s) in the checkpoint:\n{listing}"
            )

    def _listed_in(self, name: str) -> str:
        if self._weight_map and name in self._weight_map:
            return f"; {INDEX_FILE} maps it to {self._weight_map[name]}"
        return ""

    def _shard_problems(self) -> list[str]:
        problems = []
        for shard in self._shards.values():
            problems += [shard.error] if shard.error else []
            problems += shard.problems
        seen: dict[str, str] = {}
        for shard in self._shards.values():
            for name in shard.tensors:
                if name in seen:
                    problems.append(f"{shard.file}: tensor {name} is also stored in {seen[name]}")
                seen.setdefault(name, shard.file)
        return problems

    def _index_problems(self) -> list[str]:
        if self._weight_map is None:
            return []
        problems = []
        for name, file in self._weight_map.items():
            shard = self._shards[file]
            if shard.error is None and name not in shard.tensors:
                problems.append(
                    f"{INDEX_FILE}: entry {name} -> {file}, but {file} has no tensor {name}"
                )
        for shard in self._shards.values():
            for name in shard.tensors:
                if self._weight_map.get(name) != shard.file:
                    problems.append(
                        f"{shard.file}: tensor {name} is not listed for this file in {INDEX_FILE}"
                    )
        return problems

    def _total_size_problem(self) -> list[str]:
        stored = sum(self.spec(n).nbytes for n in self._where)
        if self._index_total is None or self._index_total == stored:
            return []
        return [
            f"{INDEX_FILE}: metadata.total_size is {self._index_total}, the shards hold "
            f"{stored} bytes of tensors"
        ]


def _st(dtype: torch.dtype) -> str:
    return ST_DTYPE_NAMES.get(dtype) or str(dtype)


def _fmt(spec: TensorSpec) -> str:
    return f"{list(spec.shape)} {ST_DTYPE_NAMES[spec.dtype]}"


def _tolerated(name: str) -> bool:
    return name.startswith("mtp.") and any(t in name for t in _TOLERATED_MTP)


# -- opening -------------------------------------------------------------------------------------


def open_checkpoint(path_or_hf_id: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint folder (or a local Hugging Face cache id; never downloads)."""
    try:
        path = resolve_model_path(path_or_hf_id)
    except CheckpointNotFound as exc:
        raise CheckpointError(str(exc)) from None
    args = load_config(path)
    weight_map, total = _read_index(path)
    files = sorted(set(weight_map.values())) if weight_map is not None else _lone_files(path)
    shards = {f: _read_header(path / f, f) for f in files}
    return Checkpoint(path, args, weight_map, shards, total)


def _read_index(path: Path) -> tuple[dict[str, str] | None, int | None]:
    index = path / INDEX_FILE
    if not index.is_file():
        return None, None
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
        total = data.get("metadata", {}).get("total_size")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: not valid JSON: {exc}") from None
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{index}: no 'weight_map' object (name -> shard file)") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: key 'weight_map' must map tensor names to file names")
    return weight_map, int(total) if total is not None else None


def _lone_files(path: Path) -> list[str]:
    files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no {INDEX_FILE} and no *.safetensors file")
    return files
