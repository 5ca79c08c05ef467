"""The tensor inventory of a DeepSeek-V4 checkpoint, derived from its config alone (SPEC §3.2).

`expected_tensors(args)` lists every tensor name with its shape and stored dtype; the counts,
byte totals, parameter counts and KV-cache costs below are arithmetic on that list and on the
config, so they work for the real 284 B / 1.6 T models without allocating anything.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from dsv4.engine.config import ModelArgs

BF16, F32, I64, I8 = torch.bfloat16, torch.float32, torch.int64, torch.int8
FP8, E8M0 = torch.float8_e4m3fn, torch.float8_e8m0fnu
#: safetensors dtype names, for reports and for reading headers.
ST_DTYPE_NAMES: dict[torch.dtype, str] = {
    BF16: "BF16", F32: "F32", I64: "I64", I8: "I8", FP8: "F8_E4M3", E8M0: "F8_E8M0",
}  # fmt: skip
_FP8_BLOCK, _FP4_BLOCK = 128, 32
KVLayout = Literal["ref", "packed", "packed_fp4"]


class TensorSpec(NamedTuple):
    """Shape and stored dtype of one tensor; `file` is its shard ("" when only expected).

    A NamedTuple rather than a dataclass: the real models list up to 145k of them.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


Entry = tuple[str, TensorSpec]


# -- building blocks -------------------------------------------------------------------------


def _t(name: str, dtype: torch.dtype, *shape: int) -> Entry:
    return name, TensorSpec(tuple(shape), dtype)


def _fp8(module: str, out: int, inp: int) -> Iterator[Entry]:
    """FP8 linear: e4m3 weight plus one e8m0 scale per 128x128 block."""
    yield _t(f"{module}.weight", FP8, out, inp)
    yield _t(f"{module}.scale", E8M0, -(-out // _FP8_BLOCK), -(-inp // _FP8_BLOCK))


def _fp4(module: str, out: int, inp: int) -> Iterator[Entry]:
    """FP4 linear: two e2m1 codes per int8 byte plus one e8m0 scale per 32 inputs."""
    yield _t(f"{module}.weight", I8, out, inp // 2)
    yield _t(f"{module}.scale", E8M0, out, inp // _FP4_BLOCK)


def _hc(p: str, a: ModelArgs, site: str) -> Iterator[Entry]:
    mix = (2 + a.hc_mult) * a.hc_mult
    yield _t(f"{p}.hc_{site}_fn", F32, mix, a.hc_mult * a.dim)
    yield _t(f"{p}.hc_{site}_base", F32, mix)
    yield _t(f"{p}.hc_{site}_scale", F32, 3)


def _compressor(p: str, a: ModelArgs, ratio: int, d: int) -> Iterator[Entry]:
    width = (2 if ratio == 4 else 1) * d  # ratio 4 pools overlapping windows: two halves
    yield _t(f"{p}.wkv.weight", BF16, width, a.dim)
    yield _t(f"{p}.wgate.weight", BF16, width, a.dim)
    yield _t(f"{p}.ape", F32, ratio, width)
    yield _t(f"{p}.norm.weight", BF16, d)


def _attention(p: str, a: ModelArgs, ratio: int) -> Iterator[Entry]:
    hd, g = a.head_dim, a.o_groups
    yield _t(f"{p}.attn_sink", F32, a.n_heads)
    yield from _fp8(f"{p}.wq_a", a.q_lora_rank, a.dim)
    yield _t(f"{p}.q_norm.weight", BF16, a.q_lora_rank)
    yield from _fp8(f"{p}.wq_b", a.n_heads * hd, a.q_lora_rank)
    yield from _fp8(f"{p}.wkv", hd, a.dim)
    yield _t(f"{p}.kv_norm.weight", BF16, hd)
    yield from _fp8(f"{p}.wo_a", g * a.o_lora_rank, a.n_heads * hd // g)
    yield from _fp8(f"{p}.wo_b", a.dim, g * a.o_lora_rank)
    if ratio:
        yield from _compressor(f"{p}.compressor", a, ratio, hd)
    if ratio == 4:
        ihd = a.index_head_dim
        yield from _fp8(f"{p}.indexer.wq_b", a.index_n_heads * ihd, a.q_lora_rank)
        yield _t(f"{p}.indexer.weights_proj.weight", BF16, a.index_n_heads, a.dim)
        yield from _compressor(f"{p}.indexer.compressor", a, 4, ihd)


def _ffn(p: str, a: ModelArgs, hashed: bool) -> Iterator[Entry]:
    yield _t(f"{p}.gate.weight", BF16, a.n_routed_experts, a.dim)
    if hashed:
        yield _t(f"{p}.gate.tid2eid", I64, a.vocab_size, a.n_activated_experts)
    else:
        yield _t(f"{p}.gate.bias", F32, a.n_routed_experts)
    inter = a.moe_inter_dim * a.n_shared_experts
    if a.n_shared_experts:
        yield from _fp8(f"{p}.shared_experts.w1", inter, a.dim)
        yield from _fp8(f"{p}.shared_experts.w2", a.dim, inter)
        yield from _fp8(f"{p}.shared_experts.w3", inter, a.dim)
    # every expert has the same six specs: build them once (Pro has 140k expert tensors)
    up = [spec for _, spec in _fp4("", a.moe_inter_dim, a.dim)]
    down = [spec for _, spec in _fp4("", a.dim, a.moe_inter_dim)]
    for e in range(a.n_routed_experts):
        for w, (weight, scale) in (("w1", up), ("w2", down), ("w3", up)):
            yield f"{p}.experts.{e}.{w}.weight", weight
            yield f"{p}.experts.{e}.{w}.scale", scale


def _block(p: str, a: ModelArgs, ratio: int, hashed: bool) -> Iterator[Entry]:
    yield _t(f"{p}.attn_norm.weight", BF16, a.dim)
    yield _t(f"{p}.ffn_norm.weight", BF16, a.dim)
    yield from _hc(p, a, "attn")
    yield from _hc(p, a, "ffn")
    yield from _attention(f"{p}.attn", a, ratio)
    yield from _ffn(f"{p}.ffn", a, hashed)


def _head(p: str, a: ModelArgs) -> Iterator[Entry]:
    """hc_head mixing (no Sinkhorn) and the final norm; `p` is "" for the main model."""
    yield _t(f"{p}norm.weight", BF16, a.dim)
    yield _t(f"{p}hc_head_fn", F32, a.hc_mult, a.hc_mult * a.dim)
    yield _t(f"{p}hc_head_base", F32, a.hc_mult)
    yield _t(f"{p}hc_head_scale", F32, 1)


def _mtp(i: int, a: ModelArgs) -> Iterator[Entry]:
    """MTP layer i: a non-hash block plus its input projections and own head mixing."""
    p = f"mtp.{i}"
    yield from _block(p, a, a.mtp_ratios[i], hashed=False)
    yield from _fp8(f"{p}.e_proj", a.dim, a.dim)
    yield from _fp8(f"{p}.h_proj", a.dim, a.dim)
    yield _t(f"{p}.enorm.weight", BF16, a.dim)
    yield _t(f"{p}.hnorm.weight", BF16, a.dim)
    yield from _head(f"{p}.", a)


def _entries(a: ModelArgs, include_mtp: bool) -> Iterator[Entry]:
    yield _t("embed.weight", BF16, a.vocab_size, a.dim)
    yield _t("head.weight", BF16, a.vocab_size, a.dim)  # shared by the MTP block
    yield from _head("", a)
    for layer, ratio in enumerate(a.layer_ratios):
        yield from _block(f"layers.{layer}", a, ratio, a.is_hash_layer(layer))
    if include_mtp:
        for i in range(a.n_mtp_layers):
            yield from _mtp(i, a)


def expected_tensors(args: ModelArgs, include_mtp: bool = True) -> dict[str, TensorSpec]:
    """Every tensor of a checkpoint with this config: name -> (shape, stored dtype)."""
    return dict(_entries(args, include_mtp))


# -- totals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    tensors: int
    nbytes: int
    bytes_by_dtype: dict[str, int]
    tensors_by_dtype: dict[str, int]


def totals(specs: dict[str, TensorSpec]) -> Totals:
    """Tensor count and bytes (as safetensors stores them), also per safetensors dtype name."""
    nbytes: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for spec in specs.values():
        name = ST_DTYPE_NAMES[spec.dtype]
        nbytes[name] += spec.nbytes
        count[name] += 1
    return Totals(len(specs), sum(nbytes.values()), dict(nbytes), dict(count))


def _params(spec: TensorSpec) -> int:
    """Logical parameters of a stored tensor: FP4 bytes hold two, scales count zero."""
    if spec.dtype == E8M0:
        return 0
    return spec.numel * (2 if spec.dtype == I8 else 1)


@dataclass(frozen=True)
class ParamCounts:
    """Logical parameters (FP4 counted twice, scales excluded; SPEC §3.1).

    `active` is what one token's forward pass multiplies: every non-expert weight, the
    shared experts, `n_activated_experts` routed experts per layer and the head; the
    embedding contributes one row. `active_with_embedding` counts the whole embedding
    table as SPEC §3.1 does ("embedding and head included"). The `tid2eid` lookup tables
    are integer indices, not weights: in `total` (they are stored parameters) but not active.
    """

    total: int  # main model, MTP excluded
    mtp: int  # MTP layers (they share embed and head with the main model)
    routed_experts: int  # routed experts of the main model
    active: int
    active_with_embedding: int


def param_counts(args: ModelArgs, specs: dict[str, TensorSpec] | None = None) -> ParamCounts:
    """Parameter counts of a config (`specs`: its `expected_tensors`, if already at hand)."""
    specs = expected_tensors(args) if specs is None else specs
    total = routed = tid2eid = mtp = 0
    for name, spec in specs.items():
        n = _params(spec)
        if name.startswith("mtp."):
            mtp += n
            continue
        total += n
        if ".ffn.experts." in name:
            routed += n
        elif name.endswith(".tid2eid"):
            tid2eid += n
    embed = args.vocab_size * args.dim
    per_expert = 3 * args.dim * args.moe_inter_dim
    active_routed = args.n_layers * args.n_activated_experts * per_expert
    active = total - routed - tid2eid - embed + active_routed + args.dim
    return ParamCounts(total, mtp, routed, active, active - args.dim + embed)


# -- KV cache (SPEC §9) ----------------------------------------------------------------------


def _entry_bytes(args: ModelArgs, layout: KVLayout) -> tuple[float, float]:
    """Bytes of one compressed main entry and one indexer key in a layout."""
    hd, rope, ihd = args.head_dim, args.rope_head_dim, args.index_head_dim
    if layout == "ref":  # REF's bf16 buffers
        return 2.0 * hd, 2.0 * ihd
    nope = hd - rope
    # nope dims fp8 + one e8m0 scale per 64 + rope dims bf16, padded to 8 bytes (584 at 512)
    main = -(-(nope + nope // 64 + 2 * rope) // 8) * 8
    index = (ihd if layout == "packed" else ihd // 2) + 4  # fp8 or fp4 keys + an fp32 scale
    return float(main), float(index)


def kv_bytes_per_token(args: ModelArgs, layout: KVLayout = "ref") -> float:
    """Growing KV-cache bytes per token over all main layers (window buffers excluded).

    Each compressed layer adds one entry per `ratio` tokens; CSA layers also one indexer key
    per 4 tokens. `ref` = REF's bf16 buffers, `packed` = FP8 entries of 584 B + 132 B FP8
    indexer keys, `packed_fp4` = the same with 68 B FP4 indexer keys.
    """
    entry, index = _entry_bytes(args, layout)
    total = 0.0
    for ratio in args.layer_ratios:
        if ratio:
            total += entry / ratio
        if ratio == 4:
            total += index / 4
    return total


def kv_fixed_bytes(args: ModelArgs, layout: KVLayout = "ref") -> int:
    """Per-sequence bytes that do not grow: window ring buffers and fp32 compressor states."""
    entry, _ = _entry_bytes(args, layout)
    total = 0
    for ratio in args.layer_ratios:
        total += int(args.window_size * entry)
        if ratio:  # kv_state + score_state, fp32, [coff*ratio, coff*d]
            coff = 2 if ratio == 4 else 1
            total += 2 * 4 * (coff * ratio) * (coff * args.head_dim)
        if ratio == 4:
            total += 2 * 4 * (2 * 4) * (2 * args.index_head_dim)
    return total


def kv_bytes(args: ModelArgs, n_tokens: int, layout: KVLayout = "ref") -> int:
    """KV-cache bytes of one sequence of `n_tokens` (growing part only, as SPEC §9 tabulates)."""
    return round(kv_bytes_per_token(args, layout) * n_tokens)
