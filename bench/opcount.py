"""How many device kernels a piece of code launches, counted on any device (a CPU will do).

Small decode steps are bound by kernel launches, not by arithmetic: a CUDA graph removes the CPU's launch cost
but every kernel still pays a few microseconds on the GPU. The number of ATen operators a call dispatches, less
the views (which launch nothing), is that kernel count for eager PyTorch on CUDA, and can be measured here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

_NOT_KERNELS = {"aten::lift_fresh", "aten::detach", "aten::alias", "aten::_unsafe_view", "aten::_local_scalar_dense"}


class KernelCounter(TorchDispatchMode):
    """Counts dispatched ATen operators that compute something, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if not _is_view(func) and name not in _NOT_KERNELS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _is_view(func) -> bool:
    """Views and multi-output views (split, unbind) return aliases of an input that nothing writes."""
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns) or func.is_view


def count_kernels(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> KernelCounter:
    """Run `fn` once and return what it dispatched."""
    with KernelCounter() as counter:
        fn(*args, **kwargs)
    return counter
