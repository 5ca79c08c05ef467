"""CPU engine benchmark: prefill and decode tokens/s and peak memory on the medium tiny
checkpoint, against transformers' DeepseekV4ForCausalLM on the same weights in the same run.

Regime: one sequence, one thread (`torch.set_num_threads(1)`), a random prompt of
`--prompt` tokens, then `--decode` one-token steps. The engine keeps its weights FP8/FP4 as
stored and runs the production numerics (bf16 activations, quantization simulation); the
baseline gets the weights dequantized to bf16 (transformers has no CPU FP8 path).
The two sides take turns: `--repeat` rounds, each loading each side afresh, running one
short warm-up sequence (one-time kernel set-up) and one timed sequence, so that both meet
the machine's fast and slow phases alike; each phase keeps its best time. Rates are given
from wall time and from the process's CPU time: with one thread, CPU time is the work done,
while wall time on a shared machine also counts time other jobs held the core.
Prefill is timed in two regimes: "all logits" (the engine's `prefill(ids)` API, fp32 logits
for every prompt position, against transformers' default forward) and "last logits", as a
generation runs it (`prefill(ids, logits="last")` against `logits_to_keep=1`, which is what
transformers' `generate` passes), where neither side computes the head over the prompt.
Decode is weight-traffic bound: the bound printed is (measured read bandwidth) / (bytes of
weights read per decoded token), with the bandwidth measured twice, each on 256 MiB
allocated as the engine allocates its weights (`engine/hugepages.py`: huge pages with
`DSV4_HUGEPAGES=1`), in every round (the best kept): torch's `sum` over a buffer, and the
engine's own C GEMV over a weight (software prefetch, four streams; it reads faster, so its
bound is the stricter one). The last line is one JSON object.
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
    """Single-thread streaming read bandwidth (GB/s) from summing a large buffer allocated as
    the engine's weights are (`engine/hugepages.py`)."""
    from dsv4.engine import hugepages

    x = hugepages.empty((mib * 1024 * 1024 // 4,), torch.float32).fill_(1.0)
    x.sum()
    t = time.perf_counter()
    for _ in range(5):
        x.sum()
    return 5 * x.numel() * 4 / (time.perf_counter() - t) / 1e9


def _gemv_bandwidth_gbs(mib: int = 256) -> float | None:
    """Read rate (GB/s) of the engine's own bf16 GEMV (C, software prefetch) over a weight of
    `mib` MiB: a second, higher estimate of what one thread streams than `_bandwidth_gbs`.
    None without the C kernels."""
    from dsv4.kernels import gemm_native, native

    lib = native.library("gemm")
    if lib is None:
        return None
    from dsv4.engine import hugepages

    k = 4096
    w = hugepages.empty((mib * 2**20 // (2 * k), k), torch.bfloat16).fill_(1.0)
    x = torch.ones(1, k, dtype=torch.bfloat16)
    gemm_native.bf16_gemm(lib, x, w)
    t = time.perf_counter()
    for _ in range(3):
        gemm_native.bf16_gemm(lib, x, w)
    return 3 * w.numel() * 2 / (time.perf_counter() - t) / 1e9


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


class _Clock:
    """Wall and CPU seconds since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


Laps = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
"""(wall, CPU) seconds of one timed sequence: prefill with all logits, prefill with the last
row's only, then the decode steps after the latter."""


def _best_rates(runs: list[Laps], n_prompt: int, n_decode: int) -> dict[str, float]:
    """Per-phase best of the timed runs."""
    rates = {}
    for phase, key, n in ((0, "prefill", n_prompt), (1, "prefill_last", n_prompt),
                          (2, "decode", n_decode)):  # fmt: skip
        rates[f"{key}_tps"] = n / min(r[phase][0] for r in runs)
        rates[f"{key}_tps_cpu"] = n / min(r[phase][1] for r in runs)
    return rates


def _time_engine(ckpt: Path, ids: list[int], n_decode: int, repeat: int) -> tuple[list, float]:
    """`repeat` timed sequences after a warm-up -> (their laps, peak RSS MiB)."""
    from dsv4.engine import load_model

    _reset_peak()
    model = load_model(ckpt, dtype=torch.bfloat16, quant_sim=True)

    def run(prompt: list[int], steps: int) -> Laps:
        clock = _Clock()
        model.new_session().prefill(prompt)
        prefill, clock = clock.lap(), _Clock()
        session = model.new_session()
        token = int(session.prefill(prompt, logits="last")[-1].argmax())
        prefill_last, clock = clock.lap(), _Clock()
        for _ in range(steps):
            token = int(session.decode(token).argmax())
        return prefill, prefill_last, clock.lap()

    run(ids[:16], 2)
    return [run(ids, n_decode) for _ in range(repeat)], _peak_rss_mib()


@torch.no_grad()
def _time_transformers(
    folder: Path, ids: list[int], n_decode: int, repeat: int
) -> tuple[list, float]:
    """As `_time_engine`, for transformers' DeepseekV4ForCausalLM."""
    from transformers import DeepseekV4ForCausalLM

    _reset_peak()
    model = DeepseekV4ForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()

    def run(prompt: list[int], steps: int) -> Laps:
        clock = _Clock()
        model(torch.tensor([prompt]), use_cache=True)
        prefill, clock = clock.lap(), _Clock()
        out = model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[0, -1].argmax()
        prefill_last, clock = clock.lap(), _Clock()
        for _ in range(steps):
            out = model(token.view(1, 1), past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[0, -1].argmax()
        return prefill, prefill_last, clock.lap()

    run(ids[:16], 2)
    return [run(ids, n_decode) for _ in range(repeat)], _peak_rss_mib()


def _interleaved(
    timers: dict, ids: list[int], n_decode: int, rounds: int
) -> tuple[dict[str, dict], tuple[float, float | None]]:
    """Rates of each side from `rounds` rounds that run the sides in turn, one timed sequence
    each (a fresh load and warm-up per round): the machine's speed moves between phases, and
    taking turns gives each side the same phases. Best time per phase. Peak RSS from the first
    round, where the engine runs before the baseline was ever loaded (later rounds' peaks
    would count what the other side left allocated). The read bandwidths are measured in each
    round too, and the best of each is returned: the bound is then the fast phase's."""
    laps: dict[str, list] = {name: [] for name in timers}
    peaks: dict[str, float] = {}
    bws: list[tuple[float, float | None]] = []
    for _ in range(rounds):
        for name, timer in timers.items():
            runs, peak = timer(ids, n_decode, 1)
            laps[name] += runs
            peaks.setdefault(name, peak)
        bws.append((_bandwidth_gbs(), _gemv_bandwidth_gbs()))
    gemvs = [g for _, g in bws if g is not None]
    best_bw = (max(b for b, _ in bws), max(gemvs) if gemvs else None)
    return {name: _best_rates(laps[name], len(ids), n_decode) | {"peak_rss_mib": peaks[name]}
            for name in timers}, best_bw  # fmt: skip


_PHASES = ("prefill", "prefill_last", "decode")


def _print_table(rows, result: dict, bound: float, bw: float) -> None:
    print("tokens/s (wall | CPU)         prefill, all logits  prefill, last logits"
          "               decode   peak RSS MiB")  # fmt: skip
    for label, r in rows:
        cells = [f"{r[f'{k}_tps']:9.1f} | {r[f'{k}_tps_cpu']:8.1f}" for k in _PHASES]
        print(f"{label:28s}" + "".join(f"{c:>21s}" for c in cells) + f"{r['peak_rss_mib']:15.1f}")
    if "decode_ratio" in result:
        cells = [f"{result[f'{k}_ratio']:9.2f} | {result[f'{k}_ratio_cpu']:8.2f}" for k in _PHASES]
        print(f"{'ratio engine/transformers':28s}" + "".join(f"{c:>21s}" for c in cells))
    wall, cpu = result["decode_vs_bound"], result["decode_cpu_vs_bound"]
    print(
        f"decode bound {bound:.1f} tok/s at {bw:.1f} GB/s; "
        f"engine at {wall:.0%} (wall), {cpu:.0%} (CPU)"
    )
    if "gemv_bandwidth_gbs" in result:
        print(
            f"decode bound {result['decode_bound_gemv_tps']:.1f} tok/s at the engine's own GEMV "
            f"read rate, {result['gemv_bandwidth_gbs']:.1f} GB/s; engine at "
            f"{result['decode_vs_gemv_bound']:.0%} (wall)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint", type=Path, help="checkpoint folder (default: write the medium tiny one)"
    )
    p.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    p.add_argument("--decode", type=int, default=32, help="decoded tokens")
    p.add_argument("--repeat", type=int, default=3, help="rounds of turns (best kept)")
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
    load = os.getloadavg()[0]
    timers = {"engine": lambda *a: _time_engine(ckpt, *a)}
    if not args.no_baseline:
        from dsv4.engine.export import export_dequantized

        hf_dir = export_dequantized(ckpt, work / "hf", torch.bfloat16)
        timers["transformers"] = lambda *a: _time_transformers(hf_dir, *a)
    rates, (bw, gemv_bw) = _interleaved(timers, ids, args.decode, args.repeat)
    engine = rates["engine"]
    bound = bw * 1e9 / _decode_bytes(ckpt)
    result = {"checkpoint_mib": round(disk_mib, 1), "threads": 1, "prompt": args.prompt,
              "decode": args.decode, "repeat": args.repeat, "load_avg_1min": load,
              "engine": engine, "bandwidth_gbs": round(bw, 2),
              "decode_bound_tps": round(bound, 1),
              "decode_vs_bound": round(engine["decode_tps"] / bound, 3),
              "decode_cpu_vs_bound": round(engine["decode_tps_cpu"] / bound, 3)}  # fmt: skip
    rows = [("engine (bf16, quant sim)", engine)]
    if "transformers" in rates:
        hf = rates["transformers"]
        rows.append(("transformers (bf16)", hf))
        result["transformers"] = hf
        for key in (f"{k}_tps{cpu}" for k in _PHASES for cpu in ("", "_cpu")):
            result[key.replace("tps", "ratio")] = round(engine[key] / hf[key], 2)
    if gemv_bw is not None:
        gemv_bound = gemv_bw * 1e9 / _decode_bytes(ckpt)
        result |= {"gemv_bandwidth_gbs": round(gemv_bw, 2),
                   "decode_bound_gemv_tps": round(gemv_bound, 1),
                   "decode_vs_gemv_bound": round(engine["decode_tps"] / gemv_bound, 3)}  # fmt: skip
    result["load_avg_1min_end"] = os.getloadavg()[0]
    _print_table(rows, result, bound, bw)
    print(json.dumps(result))
    os.environ.get("DSV4_KEEP_BENCH") or __import__("shutil").rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
