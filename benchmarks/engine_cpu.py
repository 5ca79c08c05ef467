"""CPU engine benchmark: prefill and decode tokens/s and peak memory on the medium tiny
checkpoint, against transformers' DeepseekV4ForCausalLM on the same weights in the same run.

Regime: one sequence, one thread (`torch.set_num_threads(1)`), a random prompt of
`--prompt` tokens, then `--decode` one-token steps. The engine keeps its weights FP8/FP4 as
stored and runs the production numerics (bf16 activations, quantization simulation); the
baseline gets the weights dequantized to bf16 (transformers has no CPU FP8 path).
Decode is weight-traffic bound: the bound printed is (measured copy bandwidth) / (bytes of
weights read per decoded token). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _peak_rss_mib() -> float:
    """Peak RSS of this process since the last `_reset_peak()` (Linux /proc), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _bandwidth_gbs(mib: int = 256) -> float:
    """Single-thread streaming read bandwidth (GB/s) from summing a large buffer."""
    x = torch.ones(mib * 1024 * 1024 // 4)
    x.sum()
    t = time.perf_counter()
    for _ in range(5):
        x.sum()
    return 5 * x.numel() * 4 / (time.perf_counter() - t) / 1e9


def _decode_bytes(ckpt_dir: Path) -> int:
    """Bytes of stored weights one decode step reads: all but the embedding table (one row)
    and the routed experts (top-k of E per layer)."""
    from dsv4.engine.checkpoint import open_checkpoint

    with open_checkpoint(ckpt_dir) as ckpt:
        a = ckpt.args
        total = 0
        for name in ckpt.names():
            spec = ckpt.spec(name)
            size = spec.dtype.itemsize * int(torch.Size(spec.shape).numel())
            if name.startswith("mtp."):
                continue
            if name == "embed.weight":
                size //= a.vocab_size
            elif ".experts." in name:
                size = size * a.n_activated_experts // a.n_routed_experts
            total += size
    return total


def _time_engine(ckpt: Path, ids: list[int], n_decode: int) -> dict[str, float]:
    from dsv4.engine import load_model

    _reset_peak()
    model = load_model(ckpt, dtype=torch.bfloat16, quant_sim=True)
    session = model.new_session()
    t0 = time.perf_counter()
    logits = session.prefill(ids)
    t1 = time.perf_counter()
    token = int(logits[-1].argmax())
    for _ in range(n_decode):
        token = int(session.decode(token).argmax())
    t2 = time.perf_counter()
    return {"prefill_tps": len(ids) / (t1 - t0), "decode_tps": n_decode / (t2 - t1),
            "peak_rss_mib": _peak_rss_mib()}  # fmt: skip


@torch.no_grad()
def _time_transformers(folder: Path, ids: list[int], n_decode: int) -> dict[str, float]:
    from transformers import DeepseekV4ForCausalLM

    _reset_peak()
    model = DeepseekV4ForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    out = model(x, use_cache=True)
    t1 = time.perf_counter()
    cache, token = out.past_key_values, out.logits[0, -1].argmax()
    for _ in range(n_decode):
        out = model(token.view(1, 1), past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[0, -1].argmax()
    t2 = time.perf_counter()
    return {"prefill_tps": len(ids) / (t1 - t0), "decode_tps": n_decode / (t2 - t1),
            "peak_rss_mib": _peak_rss_mib()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint", type=Path, help="checkpoint folder (default: write the medium tiny one)"
    )
    p.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    p.add_argument("--decode", type=int, default=32, help="decoded tokens")
    p.add_argument("--no-baseline", action="store_true", help="skip transformers")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="dsv4-bench-"))
    ckpt = args.checkpoint
    if ckpt is None:
        from dsv4.engine.tiny import write_tiny_checkpoint

        ckpt = write_tiny_checkpoint(work / "medium", "medium", seed=0)
    disk_mib = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**20
    ids = torch.randint(
        1000, 100000, (args.prompt,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    engine = _time_engine(ckpt, ids, args.decode)
    bw = _bandwidth_gbs()
    bound = bw * 1e9 / _decode_bytes(ckpt)
    result = {"checkpoint_mib": round(disk_mib, 1), "threads": 1, "prompt": args.prompt,
              "decode": args.decode, "engine": engine, "bandwidth_gbs": round(bw, 2),
              "decode_bound_tps": round(bound, 1),
              "decode_vs_bound": round(engine["decode_tps"] / bound, 3)}  # fmt: skip
    rows = [("engine (bf16, quant sim)", engine)]
    if not args.no_baseline:
        from dsv4.engine.export import export_dequantized

        hf = _time_transformers(
            export_dequantized(ckpt, work / "hf", torch.bfloat16), ids, args.decode
        )
        rows.append(("transformers (bf16)", hf))
        result["transformers"] = hf
        result["prefill_ratio"] = round(engine["prefill_tps"] / hf["prefill_tps"], 2)
        result["decode_ratio"] = round(engine["decode_tps"] / hf["decode_tps"], 2)
    print(f"{'':28s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'peak RSS MiB':>13s}")
    for label, r in rows:
        tps = f"{r['prefill_tps']:14.1f} {r['decode_tps']:13.2f}"
        print(f"{label:28s} {tps} {r['peak_rss_mib']:13.0f}")
    if "decode_ratio" in result:
        ratios = f"{result['prefill_ratio']:14.2f} {result['decode_ratio']:13.2f}"
        print(f"{'ratio engine/transformers':28s} {ratios}")
    share = result["decode_vs_bound"]
    print(f"decode bound {bound:.1f} tok/s at {bw:.1f} GB/s; engine at {share:.0%}")
    print(json.dumps(result))
    os.environ.get("DSV4_KEEP_BENCH") or __import__("shutil").rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
