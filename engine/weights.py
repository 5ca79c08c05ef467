"""Weight holders that keep the checkpoint's storage format and dequantize on the fly.

FP8 linears stay `float8_e4m3fn` + ue8m0 128×128 block scales, routed experts stay packed FP4
+ ue8m0 per-32 scales (stacked `[E, ...]` per layer, the layout the `moe` kernel takes), and
bf16 tensors stay bf16, so a model never needs its full bf16 size in memory.

On CPU the small weights the torch GEMMs would otherwise decode on every call are also kept
in the form they are multiplied in: the FP8 linears dequantized to fp32 (`FP8Linear.dense`,
4x their FP8 bytes; +53 MiB on the 305 MiB medium tiny checkpoint; `DSV4_CPU_DENSE_FP8=0`
turns it off), the gate and compressor
weights upcast to fp32. The routed experts and the head are not: as fp32 they would be
several times the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dsv4.kernels import gemm_native, rows_native
from dsv4.kernels.dispatch import native_lib, use_triton
from dsv4.kernels.gemm import (
    bf16_matmul_fp32,
    block_scales_fp32,
    dequantize_fp8,
    fp8_gemm_kept,
    fp8_matmul,
    kept_matmul,
    slab_matmul,
)
from dsv4.kernels.quant import act_quant, act_quant_values

from . import hugepages
from .numerics import Numerics

Getter = Callable[[str], torch.Tensor]  # tensor name -> stored tensor on the target device

NATIVE_MAX_ROWS = 4
"""Up to this many rows (decode), CPU linears run the C GEMMs of `kernels/gemm_native.py`,
which read the stored weight (FP8 or bf16) once; above it the torch GEMMs on the kept dense
weights win (oneDNN's blocked kernels), and the C kernels' cost grows with the rows."""


def native_gemm(x2: torch.Tensor, weight: torch.Tensor):
    """The C GEMM library for these few-row operands on CPU, else None."""
    return native_lib("gemm", x2, weight) if x2.shape[0] <= NATIVE_MAX_ROWS else None


def amx_ready() -> bool:
    """Whether CPU GEMMs of bf16-valued operands run on AMX tiles here (`gemm_native.amx_gemm`)."""
    lib = native_lib("amx")
    return lib is not None and gemm_native.amx_ready(lib)


def amx_gemm(
    x2: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """x2 bf16 [M, K] @ Wᵀ on AMX tiles (W bf16, or FP8 with fp32 block `scale`) for more than
    `NATIVE_MAX_ROWS` rows (prefill); None where that path does not apply."""
    if x2.shape[0] <= NATIVE_MAX_ROWS or x2.dtype != torch.bfloat16:
        return None
    lib = native_lib("amx", x2, weight)
    return None if lib is None else gemm_native.amx_gemm(lib, x2, weight, scale, out_dtype)


DENSE_ENV = "DSV4_CPU_DENSE_FP8"
"""1: CPU FP8 linears also keep their weight dequantized to fp32; 0: never; unset: only where
the AMX GEMM cannot run (it decodes FP8 tiles on the fly, as fast as the dense GEMM)."""


def keep_dense_on_cpu() -> bool:
    """Whether CPU FP8 linears keep their weight dequantized (`FP8Linear.dense`) for the torch
    GEMMs of prefill (see `DENSE_ENV`). The extra memory is 3x those linears' FP8 bytes (~10 %
    of a real V4 checkpoint, +53 MiB on the medium tiny one); it changes no result."""
    setting = os.environ.get(DENSE_ENV, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return not amx_ready()


@dataclass
class FP8Linear:
    """`y = x·Wᵀ` for an FP8 weight [out, in] with e8m0 block scales [⌈out/128⌉, ⌈in/128⌉].

    `scale_fp32` holds the same scales decoded once at load: the torch GEMMs would otherwise
    decode them on every call (dozens of calls per token), and they are 1/4096 of the weight's
    size. The e8m0 bytes stay for the Triton kernels.

    `dense` keeps the whole weight dequantized (exact fp32, 4x the FP8 bytes) for the torch
    GEMMs on CPU: decoding it again on every call costs several times the GEMM itself at
    decode. On other devices the Triton kernels read the FP8 bytes, and nothing is kept.
    """

    weight: torch.Tensor
    scale: torch.Tensor
    scale_fp32: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    _gemv: gemm_native.BoundFP8 | None = field(default=None, repr=False, compare=False)

    def gemv(self, lib) -> gemm_native.BoundFP8:
        """The C GEMV of this weight, bound at first use (after loading has placed it)."""
        bound = self._gemv
        if bound is None or bound.w is not self.weight or bound.lib is not lib:
            bound = self._gemv = gemm_native.BoundFP8(lib, self.weight, self.scale_fp32)
        return bound

    def __post_init__(self) -> None:
        if self.scale_fp32 is None:
            self.scale_fp32 = block_scales_fp32(self.scale)
        if self.dense is None and self.weight.device.type == "cpu" and keep_dense_on_cpu():
            self.dense = dequantize_fp8(self.weight, self.scale_fp32)

    @classmethod
    def load(cls, get: Getter, prefix: str) -> FP8Linear:
        return cls(get(f"{prefix}.weight"), get(f"{prefix}.scale"))

    def dequantized(self) -> torch.Tensor:
        """Exact fp32 [out, in]."""
        if self.dense is not None:
            return self.dense
        return dequantize_fp8(self.weight, self.scale_fp32)

    def __call__(self, x: torch.Tensor, nx: Numerics) -> torch.Tensor:
        """x act [..., in] -> act [..., out]. With quant_sim: REF's FP8 act-quant + FP8 GEMM."""
        if nx.quant_sim:
            return fp8_linears(x, (self,), nx)[0]
        lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
        if (lib := native_gemm(x2, self.weight)) is not None:
            return self.gemv(lib)(x2, False, x.dtype).view(*lead, -1)
        if (y := amx_gemm(x2, self.weight, self.scale_fp32, x.dtype)) is not None:
            return y.view(*lead, -1)
        x2, exact = x2.float(), x.dtype == torch.bfloat16
        if self.dense is not None:
            y = kept_matmul(x2, self.dense, bf16_exact=exact)
        else:
            y = fp8_matmul(x2, self.weight, self.scale_fp32, bf16_exact=exact)
        return y.to(x.dtype).view(*lead, -1)


def stack_dense(linears: tuple[FP8Linear, ...]) -> torch.Tensor | None:
    """The kept dense weights of linears that read the same input, stacked into one fp32
    [ΣN, K] tensor; each linear's `dense` becomes a view of its rows (no extra memory).
    None when a linear keeps no dense weight."""
    if any(lin.dense is None for lin in linears):
        return None
    stacked, lo = torch.cat([lin.dense for lin in linears]), 0
    for lin in linears:
        n = lin.dense.shape[0]
        lin.dense, lo = stacked[lo : lo + n], lo + n
    return stacked


def fp8_linears(
    x: torch.Tensor,
    linears: tuple[FP8Linear, ...],
    nx: Numerics,
    stacked: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """`[lin(x, nx) for lin in linears]`, with REF's act-quant of x done once, not per linear.

    The quantization is a pure function of x, so sharing it gives the same values as separate
    calls; it saves one act-quant per extra linear (a dozen small ops each). Weights kept
    dense multiply the dequantized activation values directly (`act_quant_values`: the same
    values `fp8_gemm_ref` decodes from the e4m3 bytes and scales); with `stacked`
    (`stack_dense` of these linears) in one GEMM, each output being its own dot product.
    """
    if not nx.quant_sim:
        return [lin(x, nx) for lin in linears]
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    if (lib := native_gemm(x2, linears[0].weight)) is not None:  # fused act-quant, FP8 read
        ys = [lin.gemv(lib)(x2, True, x.dtype) for lin in linears]
    elif (ys := _amx_fp8_linears(x2, linears, x.dtype)) is not None:
        pass
    elif use_triton(x2) or any(lin.dense is None for lin in linears):
        q, s = act_quant(x2, 128)
        ys = [fp8_gemm_kept(q, s, w.weight, w.scale, w.scale_fp32, x.dtype) for w in linears]
    elif stacked is not None:  # e4m3 values times power-of-two scales: bf16 products exact
        y = kept_matmul(act_quant_values(x2, 128), stacked, bf16_exact=True).to(x.dtype)
        ys = y.split([lin.dense.shape[0] for lin in linears], dim=-1)
    else:
        xq = act_quant_values(x2, 128)
        ys = [kept_matmul(xq, lin.dense, bf16_exact=True).to(x.dtype) for lin in linears]
    return [y.reshape(*lead, -1) for y in ys]


def _amx_fp8_linears(x2, linears: tuple[FP8Linear, ...], dtype) -> list[torch.Tensor] | None:
    """Prefill rows on AMX: REF's act-quant values (e4m3 x power-of-two: exact in bf16) times
    each FP8 weight decoded tile by tile; None where AMX does not apply."""
    if x2.shape[0] <= NATIVE_MAX_ROWS or x2.is_cuda or not amx_ready():
        return None
    xq = act_quant_values(x2, 128).to(torch.bfloat16)
    ys = [amx_gemm(xq, lin.weight, lin.scale_fp32, dtype) for lin in linears]
    return None if any(y is None for y in ys) else ys


def linear_act(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A plain linear in the activation dtype (bf16 weights such as `weights_proj`): fp32
    sums rounded once to x's dtype. A few rows on CPU take the C GEMV (torch's bf16 GEMM
    costs ~0.2 ms per call at one row there)."""
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    if weight.dtype == torch.bfloat16 and (lib := native_gemm(x2, weight)) is not None:
        return gemm_native.bf16_gemm(lib, x2, weight, x.dtype).view(*lead, -1)
    return F.linear(x, weight.to(x.dtype))


def linear_fp32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A linear with fp32 input and weight (REF upcasts gate, compressor and head weights).
    bf16 weights are upcast slab by slab, never as a whole fp32 copy."""
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    if weight.dtype == torch.float32:
        return F.linear(x2.float(), weight).view(*lead, -1)
    if weight.dtype == torch.bfloat16 and (lib := native_gemm(x2, weight)) is not None:
        return gemm_native.bf16_gemm(lib, x2, weight).view(*lead, -1)
    if x2.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16:
        if (y := amx_gemm(x2, weight)) is not None:
            return y.view(*lead, -1)
        return bf16_matmul_fp32(x2, weight).view(*lead, -1)
    y = slab_matmul(x2.float(), weight.shape[0], lambda lo, hi: weight[lo:hi].float())
    return y.view(*lead, -1)


def linear_bf16_valued(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`linear_fp32` for an fp32 weight kept upcast from bf16 at load: x act [..., in]
    -> fp32 [..., out], the same GEMM calls as on the bf16 weight, without the upcast."""
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    y = kept_matmul(x2.float(), weight, bf16_exact=x.dtype == torch.bfloat16)
    return y.view(*lead, -1)


@dataclass
class ExpertBank:
    """The routed experts of one layer, FP4-packed and stacked: w1/w3 int8 [E, I, D/2],
    w2 int8 [E, D, I/2], each with e8m0 scales [E, out, in/32]."""

    w1: torch.Tensor
    w1_s: torch.Tensor
    w3: torch.Tensor
    w3_s: torch.Tensor
    w2: torch.Tensor
    w2_s: torch.Tensor

    @classmethod
    def load(cls, get: Getter, prefix: str, n_experts: int) -> ExpertBank:
        parts = {}
        for w in ("w1", "w3", "w2"):
            for suffix, key in (("weight", w), ("scale", f"{w}_s")):
                parts[key] = _stack([f"{prefix}.{e}.{w}.{suffix}" for e in range(n_experts)], get)
        return cls(**parts)


def _stack(names: list[str], get: Getter) -> torch.Tensor:
    """Load tensors one at a time into a preallocated [n, ...] buffer (no transient copy)."""
    first = get(names[0])
    if first.device.type == "cpu":
        out = hugepages.empty((len(names), *first.shape), first.dtype)
    else:
        out = torch.empty((len(names), *first.shape), dtype=first.dtype, device=first.device)
    out[0] = first
    del first
    for i, name in enumerate(names[1:], start=1):
        out[i] = get(name)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """REF's RMSNorm: fp32 statistics and fp32 weight, result cast back to x's dtype.

    On CPU one C call (`kernels/rows_native.py`; the sum of squares in another order)."""
    if (lib := native_lib("rows", x, weight)) is not None and weight.dtype == torch.float32:
        return rows_native.rms_norm(lib, x, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (weight * xf).to(x.dtype)
