"""Session benchmark: does compression keep decode flat as the context grows?

Regime: the small tiny checkpoint (written on the fly), one sequence of random ids, production
numerics (bf16 activations, quantization simulation) unless `--fp32`, one thread. A fresh
session prefills the short and the long context (default 1K and 32K), then the median of
`--steps` one-token decode steps is taken at each. With a 16-token window, ratio-4 entries
picked top-k by the indexer and ratio-128 entries attended in full, a decode step reads the
window, 16 CSA entries, context/128 HCA entries, and scores context/4 indexer keys: far
less than a dense layer's `context` rows. The ratio long/short is printed.

KV bytes per token come from the session state at the long context (compressed entries and
indexer keys) against the named baseline: dense attention of the same dims, every position
kept at head_dim (512) dims per layer. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from dsv4.engine import load_model
from dsv4.engine.bench import BenchConfig, run_bench
from dsv4.engine.tiny import write_tiny_checkpoint


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", type=int, default=1024, help="short context (tokens)")
    p.add_argument("--long", type=int, default=32768, help="long context (tokens)")
    p.add_argument("--steps", type=int, default=16, help="decode steps timed per context")
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk (tokens)")
    p.add_argument("--fp32", action="store_true", help="fp32 activations, no quant simulation")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def main() -> None:
    opts = _args()
    torch.set_num_threads(opts.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_tiny_checkpoint(tmp, "small", seed=0)
        dtype = torch.float32 if opts.fp32 else torch.bfloat16
        model = load_model(ckpt, dtype=dtype, quant_sim=not opts.fp32)
    cfg = BenchConfig((opts.short, opts.long), opts.steps, opts.chunk)
    report = run_bench(model, cfg, lambda r: print(f"  context {r.context}: measured"))
    short, long = report.results
    ratio = long.decode_step_s / short.decode_step_s
    dense = report.dense_kv_bytes_per_token
    print(f"{'context':>8} {'prefill tok/s':>14} {'decode ms/step':>15} {'KV B/token':>11}")
    for r in report.results:
        print(f"{r.context:>8} {r.prefill_tok_s:>14.1f} {r.decode_step_s * 1e3:>15.2f} "
              f"{r.kv_bytes_per_token:>11.1f}")  # fmt: skip
    print(f"decode step {long.context} vs {short.context}: {ratio:.2f}x")
    print(f"KV bytes/token at {long.context}: {long.kv_bytes_per_token:.1f} "
          f"(formula {report.formula_kv_bytes_per_token:.1f}) vs dense {dense:.0f}: "
          f"{dense / long.kv_bytes_per_token:.1f}x smaller")  # fmt: skip
    summary = {
        "bench": "session",
        "report": report.to_dict(),
        "decode_step_ratio": ratio,
        "kv_bytes_per_token": long.kv_bytes_per_token,
        "dense_kv_bytes_per_token": dense,
        "kv_reduction": dense / long.kv_bytes_per_token,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
