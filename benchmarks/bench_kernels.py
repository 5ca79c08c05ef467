"""Benchmark every Triton kernel against its baseline on one CUDA device.

Regimes (V4-Flash shapes: D 4096, 64 heads of 512, 256 experts of 2048, 6 per token):
* block-scaled FP8 GEMM, prefill 4096x7168x7168 (compute-bound, TFLOPS) against cuBLAS bf16
  and `torch._scaled_mm` (per-tensor scales), and decode M=1 (weight-stream-bound, GB/s);
* FP4 GEMM and the fused MoE at decode (GB/s of weights read) and MoE prefill (TFLOPS);
* sparse attention decode over 128 window + 512 selected entries, bf16 and FP8 KV (GB/s);
* indexer scores over 16k compressed keys; activation quantization; mHC pre/post (GB/s).
* the fused indexer score + top-k at decode (one query, 16k keys, top 512: split scan).
Baselines are the torch references unless named. Prints a table with ratios against the
baseline, the share of the device's peak and the issue's target where there is one, then one
JSON line. Runs in a few minutes; sections stop being started after 8 minutes so the whole
run stays under 10. A failing row (or baseline) is reported on stderr and skipped.

Usage: python benchmarks/bench_kernels.py   (exit 2 without a CUDA device)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

# Dense peaks (TFLOPS bf16, TFLOPS fp8, HBM GB/s) of the parts this targets.
_PEAKS = {"H200": (989.0, 1979.0, 4800.0), "H100": (989.0, 1979.0, 3350.0)}


@dataclass
class Row:
    kernel: str
    shape: str
    triton_ms: float
    baseline: str
    baseline_ms: float
    tflops: float  # of the Triton kernel
    gbps: float  # of the Triton kernel
    speedup: float  # baseline_ms / triton_ms
    peak_pct: float  # of FP8 peak (GEMMs) or HBM bandwidth (memory-bound rows)
    target_pct: float | None = None  # the target for this row, same unit
    meets_target: bool | None = None


# The targets (% of FP8 peak for the prefill GEMM, % of HBM bandwidth for decode).
_TARGETS = {("fp8_gemm", True): 30.0, ("fp8_gemm", False): 60.0, ("fp4_gemm", False): 60.0,
            ("moe", False): 60.0, ("sparse_attn", False): 50.0,
            ("sparse_attn_fp8kv", False): 50.0}  # fmt: skip
_DEADLINE_S = 480.0


def _ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=50))


def _row(name, shape, fn, base_name, base_fn, flops, nbytes, peaks, compute_bound) -> Row | None:
    """Time the kernel and its baseline; None (reported on stderr) if the kernel fails."""
    try:
        t = _ms(fn)
    except Exception as exc:  # one failing kernel must not hide the other figures
        print(f"{name} {shape}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    try:
        b = _ms(base_fn) if base_fn is not None else float("nan")
    except Exception as exc:
        print(f"{name} {shape} baseline {base_name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        b = float("nan")
    tflops, gbps = flops / t / 1e9, nbytes / t / 1e6
    pct = 100 * (tflops / peaks[1] if compute_bound else gbps / peaks[2])
    target = _TARGETS.get((name, compute_bound))
    met = None if target is None else pct >= target
    return Row(name, shape, t, base_name, b, tflops, gbps, b / t, pct, target, met)


def _fp8_gemm_rows(dev, peaks) -> list[Row]:
    from dsv4.kernels.formats import quantize_fp8_weight
    from dsv4.kernels.gemm_triton import fp8_gemm_triton

    n = k = 7168
    w = torch.randn(n, k, device=dev)
    b, b_s = quantize_fp8_weight(w)
    rows = []
    for m in (4096, 1):
        rows += _fp8_gemm_shape(dev, peaks, m, w, b, b_s, fp8_gemm_triton)
    return rows


def _fp8_gemm_shape(dev, peaks, m, w, b, b_s, kernel) -> list[Row]:
    from dsv4.kernels.gemm import fp8_gemm_ref
    from dsv4.kernels.quant_triton import act_quant_triton

    n, k = w.shape
    a, a_s = act_quant_triton(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
    x16, w16 = torch.randn(m, k, device=dev, dtype=torch.bfloat16), w.bfloat16()
    one = torch.ones((), device=dev)
    flops, nbytes, shape = 2 * m * n * k, n * k + m * k + 2 * m * n, f"{m}x{n}x{k}"
    bases = [
        ("cublas_bf16", lambda: x16 @ w16.T),
        ("torch._scaled_mm", lambda: torch._scaled_mm(a, b.T, one, one, out_dtype=torch.bfloat16)),
    ]
    if m <= 64:  # the fp32 reference is too slow to time at prefill size
        bases.append(("torch_ref", lambda: fp8_gemm_ref(a, a_s, b, b_s)))
    fn = lambda: kernel(a, a_s, b, b_s)  # noqa: E731
    return [
        _row("fp8_gemm", shape, fn, nm, base, flops, nbytes, peaks, m > 64) for nm, base in bases
    ]


def _fp4_gemm_rows(dev, peaks) -> list[Row]:
    from dsv4.kernels.formats import quantize_fp4_weight
    from dsv4.kernels.gemm import fp4_gemm_ref
    from dsv4.kernels.gemm_triton import fp4_gemm_triton
    from dsv4.kernels.quant_triton import act_quant_triton

    n, k = 2048, 4096  # one expert's w1
    b, b_s = quantize_fp4_weight(torch.randn(n, k, device=dev))
    a, a_s = act_quant_triton(torch.randn(1, k, device=dev, dtype=torch.bfloat16))
    nbytes = n * k // 2 + n * k // 32 + k + 2 * n
    fn = lambda: fp4_gemm_triton(a, a_s, b, b_s)  # noqa: E731
    base = lambda: fp4_gemm_ref(a, a_s, b, b_s)  # noqa: E731
    return [_row("fp4_gemm", f"1x{n}x{k}", fn, "torch_ref", base, 2 * n * k, nbytes, peaks, False)]


def _moe_rows(dev, peaks) -> list[Row]:
    from dsv4.kernels.moe import moe_ref
    from dsv4.kernels.moe_triton import moe_triton

    e, d, i, k = 256, 4096, 2048, 6
    w = [
        torch.randint(-128, 127, s, dtype=torch.int8, device=dev)
        for s in ((e, i, d // 2), (e, i, d // 2), (e, d, i // 2))
    ]
    s = [
        torch.full(t.shape[:2] + (t.shape[2] // 16,), 120, dtype=torch.uint8, device=dev).view(
            torch.float8_e8m0fnu
        )
        for t in w
    ]
    rows = []
    for t in (1, 4096):
        x = torch.randn(t, d, device=dev, dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(e, device=dev)[:k] for _ in range(t)])
        wt = torch.rand(t, k, device=dev)
        args = (x, ids, wt, w[0], s[0], w[1], s[1], w[2], s[2], 10.0, True)
        active = min(e, t * k)
        nbytes = active * 3 * i * d * (0.5 + 1 / 32)
        flops = 2 * t * k * 3 * i * d
        rows.append(
            _row(
                "moe",
                f"T={t}",
                lambda a=args: moe_triton(*a),
                "torch_ref",
                lambda a=args: moe_ref(*a),
                flops,
                nbytes,
                peaks,
                t > 64,
            )
        )
    return rows


def _attn_rows(dev, peaks) -> list[Row]:
    from dsv4.kernels.quant import act_quant_ref
    from dsv4.kernels.sparse_attn import sparse_attn_ref
    from dsv4.kernels.sparse_attn_triton import sparse_attn_fp8kv_triton, sparse_attn_triton

    b, h, d, n, topk = 16, 64, 512, 65536, 640  # 16 sequences decoding, 128 + 512 entries
    q = torch.randn(b, 1, h, d, device=dev, dtype=torch.bfloat16)
    kv = torch.randn(b, n, d, device=dev, dtype=torch.bfloat16)
    sink = torch.randn(h, device=dev)
    idx = torch.randint(0, n, (b, 1, topk), device=dev, dtype=torch.int32)
    nope, ks = act_quant_ref(kv[..., :448], 64)
    rope = kv[..., 448:].contiguous()
    q_bytes = 2 * 2 * b * h * d  # q in, o out
    rows = [
        _row(
            "sparse_attn",
            f"B={b} H={h} K={topk}",
            lambda: sparse_attn_triton(q, kv, sink, idx, d**-0.5),
            "torch_ref",
            lambda: sparse_attn_ref(q, kv, sink, idx, d**-0.5),
            4 * b * h * topk * d,
            b * topk * d * 2 + q_bytes,
            peaks,
            False,
        )
    ]
    rows.append(
        _row(
            "sparse_attn_fp8kv",
            f"B={b} H={h} K={topk}",
            lambda: sparse_attn_fp8kv_triton(q, nope, ks, rope, sink, idx, d**-0.5),
            "torch_ref(bf16 kv)",
            lambda: sparse_attn_ref(q, kv, sink, idx, d**-0.5),
            4 * b * h * topk * d,
            b * topk * (448 + 28 + 128) + q_bytes,
            peaks,
            False,
        )
    )
    return rows


def _indexer_rows(dev, peaks) -> list[Row]:
    from dsv4.kernels.indexer import index_scores_ref
    from dsv4.kernels.indexer_triton import index_scores_triton

    rows = []
    for m, n in ((1, 16384), (1024, 4096)):
        q = torch.randn(1, m, 64, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, n, 128, device=dev, dtype=torch.bfloat16)
        w = torch.randn(1, m, 64, device=dev, dtype=torch.bfloat16)
        rows.append(
            _row(
                "index_scores",
                f"M={m} N={n}",
                lambda q=q, k=k, w=w: index_scores_triton(q, k, w),
                "torch_ref",
                lambda q=q, k=k, w=w: index_scores_ref(q, k, w),
                2 * m * n * 64 * 128,
                2 * (n * 128 + m * 64 * 128 + m * n),
                peaks,
                m > 64,
            )
        )
    return rows


def _index_topk_rows(dev, peaks) -> list[Row]:
    from dsv4.kernels.indexer import index_scores_ref, index_topk_ref
    from dsv4.kernels.indexer_triton import index_score_topk_triton

    m, n, h, d, topk = 1, 16384, 64, 128, 512
    q = torch.randn(1, m, h, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, n, d, device=dev, dtype=torch.bfloat16)
    w = torch.randn(1, m, h, device=dev, dtype=torch.bfloat16)
    pos = torch.full((m,), 4 * n - 1, device=dev)
    return [
        _row(
            "index_score_topk",
            f"M={m} N={n} k={topk}",
            lambda: index_score_topk_triton(q, k, w, pos, 4, topk),
            "torch_ref",
            lambda: index_topk_ref(index_scores_ref(q, k, w), pos, 4, topk),
            2 * m * n * h * d,
            2 * (n * d + m * h * d) + 4 * m * topk,
            peaks,
            False,
        )
    ]


def _elementwise_rows(dev, peaks) -> list[Row]:
    from dsv4.kernels.mhc import hc_post_ref, hc_pre_ref
    from dsv4.kernels.mhc_triton import hc_post_triton, hc_pre_triton
    from dsv4.kernels.quant import act_quant_ref
    from dsv4.kernels.quant_triton import act_quant_triton

    t, d = 4096, 4096
    x = torch.randn(t, d, device=dev, dtype=torch.bfloat16)
    h = torch.randn(t, 4, d, device=dev, dtype=torch.bfloat16)
    fn = torch.randn(24, 4 * d, device=dev) * 0.01
    sc, base = torch.ones(3, device=dev), torch.zeros(24, device=dev)
    post, comb = torch.rand(t, 4, device=dev), torch.rand(t, 4, 4, device=dev)
    pre_args = (h, fn, sc, base, 4, 20, 1e-6, 1e-6)
    return [
        _row(
            "act_quant",
            f"{t}x{d}",
            lambda: act_quant_triton(x),
            "torch_ref",
            lambda: act_quant_ref(x),
            0,
            t * d * 3 + t * d // 32,
            peaks,
            False,
        ),
        _row(
            "hc_pre",
            f"T={t} D={d}",
            lambda: hc_pre_triton(*pre_args),
            "torch_ref",
            lambda: hc_pre_ref(*pre_args),
            2 * t * 24 * 4 * d,
            2 * t * 4 * d * 2 + 2 * t * d,
            peaks,
            False,
        ),
        _row(
            "hc_post",
            f"T={t} D={d}",
            lambda: hc_post_triton(x, h, post, comb),
            "torch_ref",
            lambda: hc_post_ref(x, h, post, comb),
            0,
            2 * (t * d + 8 * t * d),
            peaks,
            False,
        ),
    ]


def _target_text(r: Row) -> str:
    if r.target_pct is None:
        return "-"
    return f"{'ok' if r.meets_target else 'MISS'}{r.target_pct:.0f}"


def _peaks(name: str) -> tuple[float, float, float]:
    for key, value in _PEAKS.items():
        if key in name:
            return value
    return _PEAKS["H100"]


def main() -> int:
    if not torch.cuda.is_available():
        print(
            "bench_kernels: no CUDA device here; this benchmark needs an NVIDIA GPU "
            "(H100/H200 for the targets).",
            file=sys.stderr,
        )
        return 2
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    peaks = _peaks(name)
    rows: list[Row] = []
    start = time.monotonic()
    for section in (
        _fp8_gemm_rows,
        _fp4_gemm_rows,
        _moe_rows,
        _attn_rows,
        _indexer_rows,
        _index_topk_rows,
        _elementwise_rows,
    ):
        if time.monotonic() - start > _DEADLINE_S:
            print(
                f"{section.__name__}: skipped, past the {_DEADLINE_S:.0f} s budget", file=sys.stderr
            )
            continue
        try:
            rows += [r for r in section(dev, peaks) if r is not None]
        except Exception as exc:  # one failing section must not hide the others' figures
            print(f"{section.__name__}: {type(exc).__name__}: {exc}", file=sys.stderr)
        torch.cuda.empty_cache()
    print(f"device: {name}; peaks bf16 {peaks[0]} / fp8 {peaks[1]} TFLOPS, HBM {peaks[2]} GB/s")
    print(
        f"{'kernel':18} {'shape':22} {'ms':>9} {'TFLOPS':>8} {'GB/s':>8} {'%peak':>6} "
        f"{'baseline':20} {'base ms':>9} {'ratio':>7} {'target':>7}"
    )
    for r in rows:
        print(
            f"{r.kernel:18} {r.shape:22} {r.triton_ms:9.4f} {r.tflops:8.1f} {r.gbps:8.0f} "
            f"{r.peak_pct:6.1f} {r.baseline:20} {r.baseline_ms:9.4f} {r.speedup:7.2f} "
            f"{_target_text(r):>7}"
        )
    elapsed = time.monotonic() - start
    print(json.dumps({"device": name, "elapsed_s": round(elapsed, 1),
                      "rows": [asdict(r) for r in rows]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
