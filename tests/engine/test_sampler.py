"""Sampling: parameter validation, greedy, filters, and seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from dsv4.engine.sampler import Sampler, SamplingParams, SamplingParamsError, filter_logits


def test_defaults_follow_the_generation_config():
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.stop_token_ids) == (1.0, 1.0, 0, (1,))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"seed": "7"}, "seed"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": "END"}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
    ],
)
def test_invalid_params_name_the_field(kwargs, field):
    with pytest.raises(SamplingParamsError, match=rf"SamplingParams\.{field}="):
        SamplingParams(**kwargs)


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert Sampler(SamplingParams(temperature=0)).sample(logits) == 1


def test_same_seed_same_tokens_and_different_seed_differs():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        s = Sampler(SamplingParams(seed=seed))
        return [s.sample(logits) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_keeps_only_the_k_best():
    logits = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    s = Sampler(SamplingParams(top_k=2, seed=0, temperature=5.0))
    assert {s.sample(logits) for _ in range(200)} == {0, 1}


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = filter_logits(probs.log(), top_k=0, top_p=0.8).isfinite()
    assert kept.tolist() == [True, True, False, False]
    kept = filter_logits(probs.log(), top_k=0, top_p=0.81).isfinite()
    assert kept.tolist() == [True, True, True, False]
    # The most likely token always survives, however small top_p is.
    assert filter_logits(probs.log(), top_k=0, top_p=1e-6).isfinite().tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_sampling_frequencies_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    s = Sampler(SamplingParams(seed=123))
    counts = torch.bincount(torch.tensor([s.sample(probs.log()) for _ in range(4000)]), minlength=3)
    assert torch.allclose(counts / 4000, probs, atol=0.03)


def test_sample_rejects_batched_logits():
    with pytest.raises(ValueError, match=r"shape \[vocab\]"):
        Sampler(SamplingParams()).sample(torch.zeros(2, 5))
