"""Weights in transparent huge pages (Linux): a decode step streams every weight once, and on
4 KiB pages that stream pays a TLB miss per page and restarts the hardware prefetcher at
each page boundary. On 2 MiB pages `torch.sum` reads ~15–25 % faster here.

Where the kernel hands out huge pages only on request (`enabled` = `[madvise]`, the common
default), memory must be advised before its first touch:

* `empty` allocates a tensor and advises its whole 2 MiB pages before anything writes it
  (the checkpoint reader fills big tensors through it);
* `pack` moves the small tensors of a loaded module (a block's norms, FP8 linears, experts:
  each under a huge page, so `empty` cannot help them) into one advised buffer, as views of it.

Both are no-ops where madvise is missing or refused; the tensors are then ordinary ones.

Opt-in (`DSV4_HUGEPAGES=1`): on the 2-core VM this was measured on, decode with packed
weights was within noise of decode without (the GEMVs' four streams already keep the memory
busy), while the first all-logits prefill after a load, whose 132 MB output is advised too
(`csrc/amx.c`), slowed by up to ~30 % when the weights had taken the free huge pages first.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import sys

import torch

HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_ALIGN = 64  # each packed tensor starts on a cache line
PACK_MAX = 8 << 20  # bigger tensors are allocated by `empty` at load instead


@functools.cache
def _madvise():
    if not sys.platform.startswith("linux") or os.environ.get("DSV4_HUGEPAGES", "0") != "1":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return fn


def advise(t: torch.Tensor) -> bool:
    """Ask for huge pages over the whole 2 MiB pages inside t's bytes (CPU). Effective only
    before those pages are first touched. Returns whether the kernel accepted the advice."""
    fn = _madvise()
    nbytes = t.numel() * t.element_size()
    if fn is None or t.device.type != "cpu" or nbytes < HUGE:
        return False
    lo = -(-t.data_ptr() // HUGE) * HUGE
    hi = (t.data_ptr() + nbytes) // HUGE * HUGE
    return hi > lo and fn(lo, hi - lo, _MADV_HUGEPAGE) == 0


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """`torch.empty` on CPU, advised for huge pages when it spans at least one."""
    t = torch.empty(shape, dtype=dtype)
    advise(t)
    return t


def pack(module: object) -> int:
    """Move the CPU tensors under `PACK_MAX` bytes held by `module` (a dataclass, walked
    through nested dataclasses, lists and tuples) into one advised buffer; each field then
    holds a view of it with the same values, shape and dtype. Returns the bytes moved.

    A tensor that is a view of a larger storage, or not contiguous, stays where it is (moving
    it would duplicate the storage); one tensor held by several fields stays one tensor.
    """
    if _madvise() is None:
        return 0
    slots: list[tuple[object, str, torch.Tensor]] = []
    _collect(module, slots, set())
    order: dict[int, torch.Tensor] = {}
    for _, _, t in slots:
        order.setdefault(id(t), t)
    offsets, total = {}, 0
    for key, t in order.items():
        offsets[key] = total
        total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    if total < HUGE:
        return 0
    arena = empty((total + _ALIGN,), torch.uint8)
    base = -arena.data_ptr() % _ALIGN
    views = {}
    for key, t in order.items():
        lo = base + offsets[key]
        view = arena[lo : lo + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        views[key] = view.copy_(t)
    for owner, name, t in slots:
        object.__setattr__(owner, name, views[id(t)])  # frozen dataclasses too
    return total


def _movable(t: torch.Tensor) -> bool:
    nbytes = t.numel() * t.element_size()
    return (
        t.device.type == "cpu"
        and 0 < nbytes < PACK_MAX
        and t.is_contiguous()
        and t.storage_offset() == 0
        and t.untyped_storage().nbytes() == nbytes
    )


def _collect(obj: object, slots: list, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, list | tuple):
        for item in obj:
            _collect(item, slots, seen)
        return
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            if _movable(value):
                slots.append((obj, f.name, value))
        else:
            _collect(value, slots, seen)
