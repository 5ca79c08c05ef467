"""Engine benchmark measurements: prefill and decode speed at several context lengths, peak
memory and the KV-cache bytes per token of a real session state.

Regime: one sequence of random token ids, after one untimed warm-up call. For each context
length a fresh session prefills the context in chunks of `chunk` tokens (timed: prefill
tokens/s), then decodes `decode_steps` tokens one at a time (timed: the median step, and
tokens/s from it). The KV-cache figures come from the session state after the context
(compressed entries and indexer keys, the part that grows with the sequence), beside the
inventory's formula and a dense-attention baseline of the same dims (every position kept at
head_dim per layer).
Nothing here renders; `cli/bench.py` does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .inventory import kv_bytes_per_token
from .model import Model
from .state import EntryCache, LayerState, SequenceState


@dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    contexts: tuple[int, ...] = (1024, 8192, 32768)  # context lengths (tokens)
    decode_steps: int = 16  # one-token decode steps timed after each context
    chunk: int = 1024  # prefill chunk (bounds the transient memory of long prefills)
    seed: int = 0  # seed of the random context tokens

    def __post_init__(self) -> None:
        if not self.contexts or min(self.contexts) < 1:
            raise ValueError(f"contexts={self.contexts}: expected positive token counts")
        if self.decode_steps < 1 or self.chunk < 1:
            raise ValueError(f"decode_steps={self.decode_steps}, chunk={self.chunk}: expected >= 1")


@dataclass(frozen=True)
class StateBytes:
    """Bytes of one sequence state, by part."""

    entries: int  # compressed KV entries and indexer keys: grows with the sequence
    window: int  # sliding-window ring buffers: fixed
    compressor: int  # unfinished-window compressor rows: bounded

    @property
    def total(self) -> int:
        return self.entries + self.window + self.compressor


@dataclass(frozen=True)
class ContextResult:
    context: int  # tokens in the sequence before decoding
    prefill_s: float  # wall time of the whole prefill
    prefill_tok_s: float
    decode_step_s: float  # median one-token decode step
    decode_tok_s: float
    peak_memory_bytes: int  # CUDA: max allocated; CPU: peak RSS of the process (VmHWM)
    state: StateBytes  # after the context
    kv_bytes_per_token: float  # state.entries / context


@dataclass(frozen=True)
class BenchReport:
    device: str
    dtype: str
    quant_sim: bool
    threads: int
    formula_kv_bytes_per_token: float  # `inventory.kv_bytes_per_token` (REF's bf16 layout)
    dense_kv_bytes_per_token: float  # all positions at head_dim per layer, act dtype
    results: list[ContextResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows_bytes(cache: EntryCache | None) -> int:
    return 0 if cache is None else cache.n * cache.rows.shape[1] * cache.rows.element_size()


def _layer_bytes(layer: LayerState) -> StateBytes:
    comp = [c for c in (layer.compressor, layer.index_compressor) if c is not None]
    return StateBytes(
        _rows_bytes(layer.entries) + _rows_bytes(layer.index_keys),
        layer.window.numel() * layer.window.element_size(),
        sum(c.kv.numel() * 4 + c.score.numel() * 4 for c in comp),
    )


def state_bytes(state: SequenceState) -> StateBytes:
    """Bytes held by the main layers of a sequence state (valid rows only)."""
    parts = [_layer_bytes(layer) for layer in state.layers]
    return StateBytes(
        *(sum(getattr(p, f) for p in parts) for f in ("entries", "window", "compressor"))
    )


def dense_kv_bytes_per_token(model: Model) -> float:
    """A dense-attention baseline: every position's KV kept at head_dim dims in every layer."""
    a = model.args
    return float(a.n_layers * a.head_dim * torch.finfo(model.numerics.dtype).bits // 8)


# -- memory ----------------------------------------------------------------------------------
def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- measurement -----------------------------------------------------------------------------
def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def measure_context(model: Model, ids: Sequence[int], cfg: BenchConfig) -> ContextResult:
    """Prefill `ids` (all but the decode tokens' worth at the end), then time decode steps."""
    device, n = model.device, len(ids) - cfg.decode_steps
    _reset_peak(device)
    session = model.new_session()
    prefill_s = sum(
        _timed(lambda i=i: session.prefill(ids[i : min(i + cfg.chunk, n)]), device)
        for i in range(0, n, cfg.chunk)
    )
    state = state_bytes(session.state)
    steps = [_timed(lambda t=t: session.decode(t), device) for t in ids[n:]]
    step = statistics.median(steps)
    return ContextResult(n, prefill_s, n / prefill_s, step, 1.0 / step, _peak(device),
                         state, state.entries / n)  # fmt: skip


def _warm_up(model: Model, ids: Sequence[int]) -> None:
    """One untimed prefill and decode: the first calls pay for lazy setup (allocator, kernel
    compilation, thread pools) that is no part of the steady state."""
    session = model.new_session()
    session.prefill(ids[:-1])
    session.decode(ids[-1])
    _sync(model.device)


def run_bench(
    model: Model, cfg: BenchConfig, on_result: Callable[[ContextResult], None] | None = None
) -> BenchReport:
    """Measure every context length of `cfg` on `model`; `on_result` sees each as it ends."""
    gen = torch.Generator().manual_seed(cfg.seed)
    # Speed does not depend on which ids are fed (hash routing spreads any ids over experts).
    longest = max(cfg.contexts) + cfg.decode_steps
    ids = torch.randint(0, model.args.vocab_size, (longest,), generator=gen).tolist()
    nx = model.numerics
    report = BenchReport(
        str(model.device), str(nx.dtype).removeprefix("torch."), nx.quant_sim,
        torch.get_num_threads(), kv_bytes_per_token(model.args, "ref"),
        dense_kv_bytes_per_token(model),
    )  # fmt: skip
    _warm_up(model, ids[:16])
    for context in cfg.contexts:
        result = measure_context(model, ids[: context + cfg.decode_steps], cfg)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    return report
