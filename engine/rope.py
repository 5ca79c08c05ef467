"""Rotary position embedding (SPEC §4.3): interleaved pairs on the last 64 dims, YaRN tables.

Sliding-window layers use θ = rope_theta without YaRN; compressed layers (and their
compressors and indexer) use θ = compress_rope_theta with YaRN (no attention mscale).
Angles are `position · inv_freq` in fp32 and the rotation is done in fp32 (REF multiplies by
complex64 `freqs_cis`), then written back in the activation dtype.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch

from dsv4.kernels import rows_native
from dsv4.kernels.dispatch import native_lib

from .config import ModelArgs


def inv_freqs(dim: int, theta: float, yarn: tuple[int, float, float, float] | None) -> torch.Tensor:
    """fp32 [dim/2] inverse frequencies.

    `yarn` = (original_seq_len, factor, beta_fast, beta_slow), or None for plain RoPE.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if yarn is None:
        return freqs
    orig, factor, beta_fast, beta_slow = yarn

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    smooth = 1 - ramp  # 1: keep the frequency (fast dims), 0: interpolate by `factor`
    return freqs / factor * (1 - smooth) + freqs * smooth


@dataclass(frozen=True)
class Rope:
    """A RoPE table: cos/sin of `position · inv_freq` for any positions.

    Layers with the same frequencies share one instance (`for_layer`), so that a decode step
    computes the tables of its position once per kind of layer, not once per layer."""

    inv_freq: torch.Tensor  # fp32 [rope_dim / 2]
    _step: list = field(default_factory=lambda: [None], compare=False, repr=False)

    @classmethod
    def for_layer(cls, args: ModelArgs, ratio: int, device: torch.device | str) -> Rope:
        if ratio:
            yarn = (args.original_seq_len, args.rope_factor, args.beta_fast, args.beta_slow)
            key = (args.rope_head_dim, args.compress_rope_theta, yarn, str(device))
        else:
            key = (args.rope_head_dim, args.rope_theta, None, str(device))
        if (rope := _SHARED.get(key)) is None:
            rope = _SHARED[key] = cls(inv_freqs(*key[:3]).to(device))
        return rope

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 positions [S] -> (cos, sin) fp32 [S, rope_dim / 2]."""
        angles = torch.outer(positions.to(torch.float32), self.inv_freq)
        return torch.cos(angles), torch.sin(angles)

    def positions(self, start: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions int64 [S], cos, sin) of positions start…start+S−1. A one-token result
        is kept until the next one (never written: callers only read tables)."""
        if seq == 1 and (kept := self._step[0]) is not None and kept[0] == start:
            return kept[1]
        pos = torch.arange(start, start + seq, device=self.inv_freq.device)
        result = (pos, *self.tables(pos))
        if seq == 1:
            self._step[0] = (start, result)
        return result


# weak: the tables live as long as some model's layers hold them
_SHARED: weakref.WeakValueDictionary[tuple, Rope] = weakref.WeakValueDictionary()


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """Rotate the last `2·cos.shape[-1]` dims of x [S, rd'] or [S, H, rd'] (interleaved pairs:
    (2i, 2i+1) is one complex number). `inverse` rotates by the conjugate. Returns a new tensor.

    On CPU one C call does it (`kernels/rows_native.py`, the same fp32 products and sums)."""
    if (lib := native_lib("rows", x)) is not None and x.dtype in (torch.float32, torch.bfloat16):
        return rows_native.head_norm_rope(lib, x, cos, sin, inverse=inverse)
    rd = 2 * cos.shape[-1]
    if x.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if inverse:
        sin = -sin
    pairs = x[..., -rd:].float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return torch.cat((x[..., :-rd], rotated.to(x.dtype)), dim=-1)
