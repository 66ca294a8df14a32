"""How many device kernels a piece of code launches, counted on any device (a CPU will do).

Small decode steps are bound by kernel launches, not by arithmetic: a CUDA graph removes the CPU's launch cost
but every kernel still pays a few microseconds on the GPU. The number of ATen operators a call dispatches, less
the views (which launch nothing), is close to that kernel count for eager PyTorch on CUDA, and can be measured
here. Counting runs in inference mode, where composite operators reach the counter whole (`linear`,
`layer_norm`, `rms_norm`, `scaled_dot_product_attention`: one kernel each on CUDA) instead of as their CPU parts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_NOT_KERNELS = {"aten::lift_fresh", "aten::detach", "aten::alias", "aten::_unsafe_view", "aten::_local_scalar_dense",
                "aten::dropout"}  # dropout in eval mode returns its input


class KernelCounter(TorchDispatchMode):
    """Counts dispatched ATen operators that compute something, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name
        if name not in _NOT_KERNELS and not _returned_a_view(func, args, out):
            self.counts[name] += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _returned_a_view(func, args: tuple, out) -> bool:
    """Views (and ops that may return an alias, like `to`, when they did) share their input's storage."""
    may_alias = func.is_view or any(r.alias_info is not None and not r.alias_info.is_write
                                    for r in func._schema.returns)
    if not may_alias:
        return False
    first = out[0] if isinstance(out, (tuple, list)) else out
    source = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return source is not None and isinstance(first, torch.Tensor) and (
        first.untyped_storage().data_ptr() == source.untyped_storage().data_ptr())


def count_kernels(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> KernelCounter:
    """Run `fn` once (in inference mode) and return what it dispatched."""
    with torch.inference_mode(), KernelCounter() as counter:
        fn(*args, **kwargs)
    return counter
