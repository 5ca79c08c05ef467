"""Chunked prefill and decode give the logits of one prefill (quant_sim off, fp32).

The golden checkpoint has a 16-token window and ratio-4 (CSA) and ratio-128 (HCA) layers, so
300 tokens cross many window and compression boundaries, and chunk edges fall inside windows.
"""

from __future__ import annotations

import pytest
import torch

N = 300


@pytest.fixture(scope="module")
def reference(exact_model, golden_tokens):
    return exact_model.new_session().prefill(golden_tokens[:N])


def _chunked(model, ids: list[int], size: int) -> torch.Tensor:
    session = model.new_session()
    return torch.cat([session.prefill(ids[i : i + size]) for i in range(0, len(ids), size)])


@pytest.mark.parametrize("size", [7, 64, 129])
def test_chunks_match_one_prefill(exact_model, golden_tokens, reference, size):
    got = _chunked(exact_model, golden_tokens[:N], size)
    assert (got - reference).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_one_token_chunks(exact_model, golden_tokens, reference):
    got = _chunked(exact_model, golden_tokens[:N], 1)
    assert (got - reference).abs().max().item() <= 1e-4


def test_prefill_then_decode(exact_model, golden_tokens, reference):
    session = exact_model.new_session()
    head = session.prefill(golden_tokens[:250])
    tail = torch.stack([session.decode(t) for t in golden_tokens[250:N]])
    assert session.pos == N
    assert (torch.cat([head, tail]) - reference).abs().max().item() <= 1e-4
