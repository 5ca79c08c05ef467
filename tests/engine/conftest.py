"""Shared engine fixtures: the golden tiny checkpoint (real layout) loaded once per mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"


@pytest.fixture(scope="session")
def golden_tokens() -> list[int]:
    """The 320 ids of the golden prompt (a real tokenized text)."""
    with np.load(GOLDEN / "golden_logits.npz") as z:
        return [int(t) for t in z["tokens"]]


@pytest.fixture(scope="session")
def exact_model():
    """The golden checkpoint with quantization simulation off and fp32 activations."""
    from dsv4.engine import load_model

    torch.set_num_threads(1)
    return load_model(GOLDEN / "checkpoint", dtype=torch.float32, quant_sim=False)
