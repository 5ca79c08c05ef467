"""Session files: a session's state, token ids and snapshots in one safetensors file.

The header (safetensors metadata, all strings) names what the state is only valid for: the
model config fingerprint (`ModelArgs.fingerprint()`), the numerics (activation dtype and
quant_sim, since they change every stored value), the position and the SHA-256 of the token
prefix, so that a file can be matched to a prompt without reading its tensors. `layout` maps
each layer's fields to tensor names; a tensor shared between the state and a snapshot (the
compressor rows, never written in place) is stored once.

Tensors are stored as they are (bf16 or fp32), so a save/load round trip is bit-exact.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import EngineError
from .model import Model
from .snapshots import SnapshotLog, SnapshotPolicy
from .state import (
    CompressorState,
    EntryCache,
    LayerSnapshot,
    LayerState,
    SequenceState,
    StateSnapshot,
)

FORMAT = "dsv4-session"
VERSION = "1"
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class SessionFileError(EngineError, ValueError):
    """A session file that is unreadable or was saved for another model or numerics."""


def token_prefix_hash(tokens: Sequence[int]) -> str:
    """SHA-256 (hex) of the token ids as little-endian int64."""
    data = b"".join(int(t).to_bytes(8, "little", signed=True) for t in tokens)
    return hashlib.sha256(data).hexdigest()


def model_header(model: Model) -> dict[str, str]:
    """The header fields a session file must share with the model it is loaded into."""
    nx = model.numerics
    dtype = next(k for k, v in _DTYPES.items() if v == nx.dtype)
    return {
        "fingerprint": model.args.fingerprint(),
        "dtype": dtype,
        "quant_sim": str(nx.quant_sim).lower(),
    }


# -- writing ---------------------------------------------------------------------------------
class _Store:
    """Tensors by name; one name per tensor object (the objects are kept alive here)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}

    def put(self, name: str, t: torch.Tensor) -> str:
        if id(t) not in self._names:
            self._names[id(t)] = name
            self.tensors[name] = t.contiguous()
        return self._names[id(t)]


def _pack_compressor(c: CompressorState | None, name: str, store: _Store) -> Any:
    if c is None:
        return None
    return {"kv": store.put(f"{name}.kv", c.kv), "score": store.put(f"{name}.score", c.score),
            "start": c.start}  # fmt: skip


def _pack_layer(layer: LayerState, name: str, store: _Store) -> dict[str, Any]:
    def rows(cache: EntryCache | None, field: str) -> str | None:
        return None if cache is None else store.put(f"{name}.{field}", cache.valid())

    return {
        "window": store.put(f"{name}.window", layer.window),
        "entries": rows(layer.entries, "entries"),
        "index_keys": rows(layer.index_keys, "index_keys"),
        "compressor": _pack_compressor(layer.compressor, f"{name}.compressor", store),
        "index_compressor": _pack_compressor(
            layer.index_compressor, f"{name}.index_compressor", store
        ),
    }


def _pack_snapshot_layer(snap: LayerSnapshot, name: str, store: _Store) -> dict[str, Any]:
    return {
        "window": store.put(f"{name}.window", snap.window),
        "compressor": _pack_compressor(snap.compressor, f"{name}.compressor", store),
        "index_compressor": _pack_compressor(
            snap.index_compressor, f"{name}.index_compressor", store
        ),
        "n_entries": snap.n_entries,
        "n_index_keys": snap.n_index_keys,
    }


def pack_session(session: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header) of a session: its state, token ids and snapshots."""
    store = _Store()
    st = session.state
    layout = {
        "layers": [_pack_layer(x, f"state.layers.{i}", store) for i, x in enumerate(st.layers)],
        "mtp": [_pack_layer(x, f"state.mtp.{i}", store) for i, x in enumerate(st.mtp)],
        "snapshots": [
            _pack_snapshot(s, f"snapshots.{k}", store) for k, s in enumerate(session.snapshots)
        ],  # fmt: skip
    }
    store.put("tokens", torch.tensor(session.tokens, dtype=torch.int64))
    header = {"format": FORMAT, "version": VERSION, **model_header(session.model),
              "pos": str(st.pos), "tokens_sha256": token_prefix_hash(session.tokens),
              "layout": json.dumps(layout)}  # fmt: skip
    return store.tensors, header


def _pack_snapshot(snap: StateSnapshot, name: str, store: _Store) -> dict[str, Any]:
    return {
        "pos": snap.pos,
        "layers": [
            _pack_snapshot_layer(x, f"{name}.layers.{i}", store) for i, x in enumerate(snap.layers)
        ],  # fmt: skip
        "mtp": [_pack_snapshot_layer(x, f"{name}.mtp.{i}", store) for i, x in enumerate(snap.mtp)],
    }


def save_session(session: Any, path: str | os.PathLike[str]) -> None:
    """Write `session` to `path` (a safetensors file; overwritten if present)."""
    if len(session.tokens) != session.pos:
        raise SessionFileError(
            f"cannot save to {path}: the session holds {session.pos} positions but knows "
            f"{len(session.tokens)} token ids"
        )
    tensors, header = pack_session(session)
    save_file(tensors, str(path), metadata=header)


# -- reading ---------------------------------------------------------------------------------
def read_session(
    model: Model, path: str | os.PathLike[str], policy: SnapshotPolicy | None = None
) -> tuple[SequenceState, list[int], SnapshotLog]:
    """(state, token ids, snapshots) from a file written by `save_session` for this model."""
    header, tensors = _read(Path(path), model.device)
    _check_header(header, model, path)
    try:
        return unpack_session(model, tensors, header, policy or SnapshotPolicy())
    except (KeyError, TypeError, ValueError) as exc:
        raise SessionFileError(f"{path}: malformed session layout: {exc}") from None


def load_session(model: Model, path: str | os.PathLike[str], policy: SnapshotPolicy | None = None):
    """A new `Session` of `model` holding the state saved in `path`."""
    from .session import Session

    state, tokens, snapshots = read_session(model, path, policy)
    return Session(model, state, tokens, snapshots)


def _read(path: Path, device: torch.device) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise SessionFileError(f"{path}: no such session file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        return header, load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise SessionFileError(f"{path}: not a readable safetensors file: {exc}") from None


def _check_header(header: dict[str, str], model: Model, path: Any) -> None:
    if header.get("format") != FORMAT:
        raise SessionFileError(f"{path}: not a dsv4 session file (no format={FORMAT!r} header)")
    if header.get("version") != VERSION:
        raise SessionFileError(
            f"{path}: session file version {header.get('version')!r}; this engine reads {VERSION}"
        )
    expected = model_header(model)
    for key, want in expected.items():
        if header.get(key) != want:
            raise SessionFileError(
                f"{path}: saved with {key}={header.get(key)!r}, but the model has {key}={want!r}; "
                "a session state is only valid for the model config and numerics that made it"
            )


def unpack_session(
    model: Model, tensors: dict[str, torch.Tensor], header: dict[str, str], policy: SnapshotPolicy
) -> tuple[SequenceState, list[int], SnapshotLog]:
    """Rebuild the state, token ids and snapshot log from `pack_session`'s output."""
    layout = json.loads(header["layout"])
    tokens = [int(t) for t in tensors["tokens"].tolist()]
    pos = int(header["pos"])
    if len(tokens) != pos or token_prefix_hash(tokens) != header["tokens_sha256"]:
        raise ValueError(f"the token ids do not match the header (pos={pos}, tokens_sha256)")
    fresh = model.new_state()
    layers = [_unpack_layer(d, tensors, ref) for d, ref in _paired(layout["layers"], fresh.layers)]
    mtp = [_unpack_layer(d, tensors, ref) for d, ref in _paired(layout["mtp"], fresh.mtp)]
    log = SnapshotLog(policy)
    for snap in layout["snapshots"]:
        log.add(_unpack_snapshot(snap, tensors))
    return SequenceState(pos, layers, mtp), tokens, log


def _paired(saved: list, fresh: list) -> zip:
    if len(saved) != len(fresh):
        raise ValueError(f"{len(saved)} layers saved, the model has {len(fresh)}")
    return zip(saved, fresh, strict=True)


def _unpack_compressor(d: Any, tensors: dict[str, torch.Tensor]) -> CompressorState | None:
    return None if d is None else CompressorState(tensors[d["kv"]], tensors[d["score"]], d["start"])


def _unpack_layer(d: dict, tensors: dict[str, torch.Tensor], ref: LayerState) -> LayerState:
    """A layer state from the file, checked against `ref` (a fresh state of the model)."""

    def rows(name: str | None, like: EntryCache | None) -> EntryCache | None:
        if (name is None) != (like is None):
            raise ValueError("the layer kinds (compressed or not) differ from the model's")
        if name is None:
            return None
        t = tensors[name]
        _check_like(t, like.rows, name)
        return EntryCache(t, t.shape[0])

    window = tensors[d["window"]]
    if window.shape != ref.window.shape or window.dtype != ref.window.dtype:
        raise ValueError(f"{d['window']}: {tuple(window.shape)} {window.dtype}, expected "
                         f"{tuple(ref.window.shape)} {ref.window.dtype}")  # fmt: skip
    return LayerState(window, rows(d["entries"], ref.entries),
                      _unpack_compressor(d["compressor"], tensors),
                      rows(d["index_keys"], ref.index_keys),
                      _unpack_compressor(d["index_compressor"], tensors))  # fmt: skip


def _check_like(t: torch.Tensor, like: torch.Tensor, name: str) -> None:
    if t.dim() != 2 or t.shape[1] != like.shape[1] or t.dtype != like.dtype:
        raise ValueError(f"{name}: {tuple(t.shape)} {t.dtype}, expected [n, {like.shape[1]}] "
                         f"{like.dtype}")  # fmt: skip


def _unpack_snapshot(d: dict, tensors: dict[str, torch.Tensor]) -> StateSnapshot:
    def layer(x: dict) -> LayerSnapshot:
        return LayerSnapshot(tensors[x["window"]], _unpack_compressor(x["compressor"], tensors),
                             _unpack_compressor(x["index_compressor"], tensors),
                             x["n_entries"], x["n_index_keys"])  # fmt: skip

    return StateSnapshot(d["pos"], tuple(map(layer, d["layers"])), tuple(map(layer, d["mtp"])))
