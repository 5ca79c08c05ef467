"""The engine (quant_sim off, fp32) against transformers' DeepseekV4ForCausalLM on the same
exactly dequantized weights: two independent implementations of SPEC §4, prefill and decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsv4.engine import load_model
from dsv4.engine.export import export_dequantized

from .oracle import load_oracle, oracle_prefill_decode

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"

pytest.importorskip("transformers")

PREFILL, TOTAL = 200, 240  # decode crosses CSA boundaries and window wraps


def _has_repeated_experts(ckpt_dir, ids: torch.Tensor) -> bool:
    """SPEC §7.1: transformers differs from REF when a tid2eid row repeats an expert."""
    from dsv4.engine.checkpoint import open_checkpoint

    with open_checkpoint(ckpt_dir) as ckpt:
        for name in ckpt.names():
            if name.endswith("tid2eid"):
                rows = ckpt.get(name)[ids].sort(-1).values
                if bool((rows[:, 1:] == rows[:, :-1]).any()):
                    return True
    return False


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    torch.set_num_threads(1)
    folder = export_dequantized(GOLDEN / "checkpoint", tmp_path_factory.mktemp("oracle"))
    return load_oracle(folder)


def test_engine_matches_transformers(oracle, golden_tokens):
    ids = torch.tensor(golden_tokens[:TOTAL])
    assert not _has_repeated_experts(GOLDEN / "checkpoint", ids)
    want_prefill, want_decode = oracle_prefill_decode(oracle, ids, PREFILL)
    model = load_model(GOLDEN / "checkpoint", dtype=torch.float32, quant_sim=False)
    session = model.new_session()
    got_prefill = session.prefill(ids[:PREFILL])
    got_decode = torch.stack([session.decode(int(t)) for t in ids[PREFILL:]])
    assert (got_prefill - want_prefill).abs().max().item() <= 1e-4
    assert (got_decode - want_decode).abs().max().item() <= 1e-4
