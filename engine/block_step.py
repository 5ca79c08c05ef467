"""A one-token block step on CPU: mHC mixing, norms and the MoE with their C kernels bound
once, as `AttentionStep` does for the attention (see there why).

The calls and arguments are those the general path makes through the wrappers
(`kernels/mhc_native.py`, `rows_native.py`, `route_native.py`, `moe_native.py` and the
shared expert's `gemm_native.fp8_swiglu`), so the results are the same bits; the tests
compare the two paths.
"""

from __future__ import annotations

import ctypes

import torch

from dsv4.kernels import gemm_native, moe_native, native, route_native, rows_native
from dsv4.kernels.dispatch import native_lib
from dsv4.kernels.native import ACT_KIND, F32, I64, P

from .numerics import Numerics
from .state import LayerState

_LIBS = ("mhc", "rows", "route", "moe", "gemm")


class BlockStep:
    """One `Block` for a single token, for one act dtype and numerics mode."""

    def __init__(self, block, dtype: torch.dtype, quant: bool, libs: dict[str, ctypes.CDLL]):
        a, ffn = block.args, block.ffn
        self.block, self.dtype, self.quant, self.libs = block, dtype, quant, libs
        self.kind, self.hc, self.d = ACT_KIND[dtype], a.hc_mult, a.dim
        self.iters, self.eps, self.hc_eps = a.hc_sinkhorn_iters, a.norm_eps, a.hc_eps
        mhc = libs["mhc"]
        self.pre = native.declare(mhc, "mhc_pre", P, P, P, P, P, P, P, I64, I64, I64, I64, F32,
                                  F32, I64)  # fmt: skip
        self.post = native.declare(mhc, "mhc_post", P, P, P, P, P, I64, I64, I64, I64)
        self.norm = rows_native._fn(libs["rows"], "dsv4_rms_norm")
        self.add_act = rows_native._fn(libs["rows"], "dsv4_add_act")
        self.route = route_native._fn(libs["route"])
        self.experts = moe_native._kernel(libs["moe"])
        self.swiglu = gemm_native._fn(libs["gemm"], "dsv4_fp8_swiglu")
        e = ffn.experts
        self.moe_ptrs = [t.data_ptr() for t in (e.w1, e.w1_s, e.w3, e.w3_s, e.w2, e.w2_s)]
        self.n_experts, self.inter = e.w1.shape[0], e.w1.shape[1]
        sh = ffn.shared
        self.shared_ptrs = [t.data_ptr() for lin in (sh.w1, sh.w3, sh.w2)
                            for t in (lin.weight, lin.scale_fp32)]  # fmt: skip
        self.shared_inter = sh.w1.weight.shape[0]
        self.gate, self.vocab = ffn.gate.data_ptr(), 0
        self.bias = None if ffn.bias is None else ffn.bias.data_ptr()
        self.tid2eid = None if ffn.tid2eid is None else ffn.tid2eid.data_ptr()
        if ffn.tid2eid is not None:
            self.vocab = ffn.tid2eid.shape[0]
        hc, d, k = self.hc, self.d, ffn.topk
        act = {"y": d, "xn": d, "shared": d}
        self.t = {name: torch.empty(1, n, dtype=dtype) for name, n in act.items()}
        self.t |= {"post": torch.empty(1, hc), "comb": torch.empty(1, hc, hc),
                   "idx": torch.empty(1, k, dtype=torch.int64), "w": torch.empty(1, k),
                   "routed": torch.empty(1, d)}  # fmt: skip
        self.p = {name: t.data_ptr() for name, t in self.t.items()}

    @classmethod
    def build(cls, block, h: torch.Tensor, nx: Numerics) -> BlockStep | None:
        """The step for these operands, or None where the general path must run."""
        ffn, e, sh = block.ffn, block.ffn.experts, block.ffn.shared
        if h.dtype not in ACT_KIND or h.dim() != 3:
            return None
        libs = {}
        for name in _LIBS:
            if (lib := native_lib(name, h)) is None:
                return None
            libs[name] = lib
        x = torch.empty(1, h.shape[-1], dtype=h.dtype)
        ids, w = torch.empty(1, ffn.topk, dtype=torch.int64), torch.empty(1, ffn.topk)
        if not moe_native.native_supported(x, ids, w, e.w1, e.w1_s, e.w3, e.w3_s, e.w2, e.w2_s,
                                           nx.quant_sim):  # fmt: skip
            return None
        d, i = sh.w1.weight.shape[1], sh.w1.weight.shape[0]
        if nx.quant_sim and (d % 128 or i % 128):
            return None
        return cls(block, h.dtype, nx.quant_sim, libs)

    def matches(self, h: torch.Tensor, nx: Numerics) -> bool:
        return (h.dtype == self.dtype and nx.quant_sim == self.quant
                and native_lib("mhc", h) is self.libs["mhc"])  # fmt: skip

    def _mix(self, h: torch.Tensor, hc, norm_w: torch.Tensor) -> None:
        """hc_pre of h [1, hc, D] into y, post, comb, then the RMSNorm of y into xn."""
        p = self.p
        self.pre(h.data_ptr(), hc.fn.data_ptr(), hc.scale.data_ptr(), hc.base.data_ptr(),
                 p["y"], p["post"], p["comb"], 1, self.hc, self.d, self.iters, self.eps,
                 self.hc_eps, self.kind)  # fmt: skip
        self.norm(p["y"], norm_w.data_ptr(), p["xn"], 1, self.d, self.eps, self.kind)

    def _combine(self, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """hc_post: the new residual streams act [1, hc, D]."""
        y = torch.empty_like(h)
        p = self.p
        self.post(out.data_ptr(), h.data_ptr(), p["post"], p["comb"], y.data_ptr(), 1, self.hc,
                  self.d, self.kind)  # fmt: skip
        return y

    def __call__(
        self, h: torch.Tensor, ids: torch.Tensor, start: int, state: LayerState, nx: Numerics
    ) -> torch.Tensor:
        """h act [1, hc, D] -> act [1, hc, D], as `Block.__call__`; updates `state`."""
        b = self.block
        h = h.contiguous()
        self._mix(h, b.hc_attn, b.attn_norm)
        h = self._combine(b.attn(self.t["xn"], start, state, nx), h)
        self._mix(h, b.hc_ffn, b.ffn_norm)
        return self._combine(self._moe(ids, nx), h)

    def _moe(self, ids: torch.Tensor, nx: Numerics) -> torch.Tensor:
        """`MoE.__call__` of xn: routed experts (fp32) plus the shared expert, cast once."""
        p, ffn, kind = self.p, self.block.ffn, self.kind
        ids = ids.to(torch.int64).contiguous()
        bad = self.route(p["xn"], kind, self.gate, self.bias, self.tid2eid, self.vocab,
                         ids.data_ptr(), 1, self.d, self.n_experts, ffn.topk, ffn.route_scale,
                         p["idx"], p["w"])  # fmt: skip
        if bad:
            raise IndexError(f"route: {bad} token(s) with an id or hashed expert out of range")
        bad = self.experts(p["xn"], kind == 1, p["idx"], p["w"], 1, ffn.topk, self.d,
                           self.inter, self.n_experts, *self.moe_ptrs, ffn.limit,
                           self.quant, p["routed"], 0)  # fmt: skip
        if bad:
            raise (MemoryError if bad < 0 else IndexError)(f"moe_fp4 failed ({bad})")
        rc = self.swiglu(p["xn"], kind, *self.shared_ptrs, p["shared"], 1, self.d,
                         self.shared_inter, ffn.shared.limit, int(self.quant))  # fmt: skip
        if rc:
            raise MemoryError("fp8_swiglu: the C kernel could not allocate its work buffers")
        out = torch.empty(1, self.d, dtype=self.dtype)  # (routed + shared.float()).to(act)
        self.add_act(p["routed"], p["shared"], out.data_ptr(), self.d, kind)
        return out
