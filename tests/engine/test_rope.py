"""RoPE tables: one shared instance per kind of layer, and a decode step's tables computed
once and then reused, with the values `tables` gives."""

from __future__ import annotations

import torch

from dsv4.engine.config import load_config
from dsv4.engine.rope import Rope

from .conftest import GOLDEN


def test_layers_of_one_kind_share_their_tables():
    args = load_config(GOLDEN / "checkpoint")
    compressed = Rope.for_layer(args, 4, "cpu")
    assert Rope.for_layer(args, 128, "cpu") is compressed
    window = Rope.for_layer(args, 0, "cpu")
    assert window is not compressed
    assert not torch.equal(window.inv_freq, compressed.inv_freq)  # YaRN vs plain


def test_positions_are_the_tables_of_the_positions():
    rope = Rope.for_layer(load_config(GOLDEN / "checkpoint"), 4, "cpu")
    for start, seq in ((0, 1), (7, 1), (7, 1), (300, 5), (8, 1)):
        pos, cos, sin = rope.positions(start, seq)
        assert torch.equal(pos, torch.arange(start, start + seq))
        want_cos, want_sin = rope.tables(pos)
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
    assert rope.positions(8, 1)[1] is rope.positions(8, 1)[1]  # kept, not recomputed
    assert rope.positions(9, 1)[0].item() == 9
