"""An independent oracle for the engine: transformers' `DeepseekV4ForCausalLM` (test extra) on
the same weights, dequantized exactly (see `dsv4.engine.export`)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_oracle(folder: Path, dtype: torch.dtype = torch.float32):
    from transformers import DeepseekV4ForCausalLM

    return DeepseekV4ForCausalLM.from_pretrained(folder, dtype=dtype).eval()


@torch.no_grad()
def oracle_prefill_decode(
    model, ids: torch.Tensor, prefill: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of a prefill over ids[:prefill] [prefill, V], logits of one-token decode steps
    over the rest [len - prefill, V]) with transformers' cache."""
    out = model(ids[None, :prefill], use_cache=True)
    head, cache, rows = out.logits[0].float(), out.past_key_values, []
    for t in ids[prefill:]:
        out = model(t.view(1, 1), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0, -1].float())
    return head, torch.stack(rows)
