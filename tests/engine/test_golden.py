"""Golden parity: the engine against the official reference's logits on the tiny checkpoint
in the real layout (tests/data/golden, metrics and limits from its README / golden_meta.json).

`nosim` (quantization simulation off, fp32) checks the architecture exactly; `bf16` and
`fp32` (REF's production numerics, discontinuous through FP8 rounding) are checked with the
README's statistical limits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsv4.engine import load_model

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"
MODES = {
    "nosim": (torch.float32, False),
    "bf16": (torch.bfloat16, True),
    "fp32": (torch.float32, True),
}


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN / "golden_logits.npz") as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads((GOLDEN / "golden_meta.json").read_text())
    return data, meta


def run_engine(mode: str, tokens: np.ndarray, prefill_len: int) -> dict[str, torch.Tensor]:
    """The three golden runs: prefill (all tokens), prefix (first prefill_len), decode (rest)."""
    dtype, sim = MODES[mode]
    torch.set_num_threads(1)  # deterministic timing on shared runners; results do not depend on it
    model = load_model(GOLDEN / "checkpoint", dtype=dtype, quant_sim=sim)
    ids = torch.as_tensor(tokens, dtype=torch.int64)
    out = {"prefill": model.new_session().prefill(ids)}
    session = model.new_session()
    out["prefix"] = session.prefill(ids[:prefill_len])
    out["decode"] = torch.stack([session.decode(int(t)) for t in ids[prefill_len:]])
    return out


def metrics(logits: torch.Tensor, z: dict, key: str, margin: float) -> dict[str, float]:
    """The README's comparison metrics for one run (`key` = f"{mode}__{run}")."""
    lg = logits.double().numpy()
    cols = z["cols"].astype(np.int64)
    col_diff = np.abs(lg[:, cols] - z[f"{key}__cols_vals"])
    top_ids = z[f"{key}__topk_ids"].astype(np.int64)
    top_diff = np.abs(np.take_along_axis(lg, top_ids, 1) - z[f"{key}__topk_vals"])
    row_max = np.maximum(col_diff.max(1), top_diff.max(1))
    max_abs = row_max.max()
    if f"{key}__full" in z and z[f"{key}__full"].size:
        full_diff = np.abs(lg[z[f"{key}__full_rows"].astype(np.int64)] - z[f"{key}__full"])
        max_abs = max(max_abs, full_diff.max())
    agree = lg.argmax(1) == z[f"{key}__argmax"]
    vals = z[f"{key}__topk_vals"]
    confident = (vals[:, 0] - vals[:, 1]) > margin
    lse = torch.logsumexp(logits.double(), dim=-1).numpy()
    return {
        "max_abs": float(max_abs),
        "mean_abs": float(col_diff.mean()),
        "p90_row_max": float(np.percentile(row_max, 90)),
        "top1": float(agree.mean()),
        "confident_top1": float(agree[confident].mean()) if confident.any() else 1.0,
        "lse_max_abs": float(np.abs(lse - z[f"{key}__lse"]).max()),
    }


def check(mode: str, golden) -> None:
    z, meta = golden
    limits = meta["tolerances"][mode]
    results = run_engine(mode, z["tokens"], int(z["prefill_len"]))
    failures = []
    for run, logits in results.items():
        assert logits.dtype == torch.float32
        assert logits.shape == (z[f"{mode}__{run}__argmax"].shape[0], meta["vocab_size"])
        got = metrics(logits, z, f"{mode}__{run}", limits["_margin"])
        for name, (op, bound) in ((k, v) for k, v in limits.items() if not k.startswith("_")):
            ok = got[name] <= bound if op == "<=" else got[name] >= bound
            if not ok:
                failures.append(f"{mode}/{run}: {name} = {got[name]:.3g}, limit {op} {bound}")
    assert not failures, "\n".join(failures)


def test_nosim_exact(golden):
    check("nosim", golden)


def test_bf16_production(golden):
    check("bf16", golden)


def test_fp32_with_simulation(golden):
    check("fp32", golden)
