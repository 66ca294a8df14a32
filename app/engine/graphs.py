"""One graph runner for every model part (T3's decode step, S3Gen's encoder, CFM step and vocoder).

A part registers its functions (`fn(*inputs) -> tuple of tensors`, reading and writing only tensors it is given
or owns), then `capture`s the shapes it will serve and `run`s them:

* a captured key replays its CUDA graph (tensor inputs are copied into the graph's static inputs first);
* a prepared key without a graph, or any key of a `dynamic` function, runs the torch.compile'd function;
* anything else runs eagerly, so a new shape never stalls a request on a compile or a capture.

A failure while capturing or running an optimized path never fails a request: the runner falls back to eager for
good and records why in `status()`.

`--compile-mode` means one thing everywhere (CUDA graphs are always ours, captured per shape here; torch.compile
never records its own, which would be a second, competing graph mechanism):

* `none`: our CUDA graphs of the eager code (fastest start-up);
* `reduce-overhead`: the same (torch's reduce-overhead *is* CUDA graphs, which we already capture);
* `default`: inductor's kernels, captured inside our CUDA graphs;
* `max-autotune`: inductor's max-autotune kernels (`max-autotune-no-cudagraphs`), inside our CUDA graphs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

Tensors = tuple[torch.Tensor, ...]
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
INDUCTOR_MODES: dict[str, str | None] = {"none": None, "reduce-overhead": None, "default": "default",
                                         "max-autotune": "max-autotune-no-cudagraphs"}
WARM_RUNS = 2  # runs before a capture: lets compilation, cuBLAS/cuFFT plans and the allocator settle


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: Tensors


@dataclass
class _Function:
    eager: Callable[..., Tensors]
    optimized: Callable[..., Tensors]
    compiled: bool
    dynamic: bool  # one compile serves every shape: run optimized even where not prepared
    copy_outputs: bool  # hand out copies of a graph's outputs (the next replay overwrites them)
    prepared: set[Hashable] = field(default_factory=set)
    graphs: dict[Hashable, _Graph] = field(default_factory=dict)


def _key(inputs: tuple) -> tuple:
    """Tensors by shape and dtype, anything else (ints naming a bucket) by value."""
    return tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x for x in inputs)


class GraphRunner:
    """Eager, compiled or CUDA-graph execution of registered functions per input shape; see the module docstring.
    Not thread-safe: one caller (the engine worker)."""

    def __init__(self, name: str, device: torch.device | str, compile_mode: str | None = None,
                 cuda_graphs: bool = True):
        self.name = name
        self.device = torch.device(device)
        mode = compile_mode or "none"
        self.compile_mode: str | None = None if mode == "none" else mode
        self.inductor_mode = INDUCTOR_MODES.get(mode, mode)  # unknown modes go to torch.compile, which says why
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.capture_seconds = 0.0
        self.fallback_reason: str | None = None
        self._functions: dict[str, _Function] = {}
        self._pool: Any = None

    @property
    def optimizing(self) -> bool:
        return self.cuda_graphs or self.inductor_mode is not None

    def register(self, name: str, fn: Callable[..., Tensors], *, compile: bool = True, dynamic: bool = False,
                 copy_outputs: bool = True, shapes: int = 64) -> None:
        """Make `fn` runnable as `name`; with `compile` (and an inductor mode) its optimized version is
        torch.compile'd (`dynamic`: once for every shape; else with room for `shapes` specialisations)."""
        optimized = fn
        if compile and self.inductor_mode is not None:
            try:
                optimized = compile_function(fn, self.inductor_mode, shapes, dynamic)
            except Exception as exc:  # e.g. an unknown mode: serve without inductor, say why in status()
                self._drop_compile(f"torch.compile({self.inductor_mode!r}) failed: {type(exc).__name__}: {exc}")
        self._functions[name] = _Function(fn, optimized, optimized is not fn, dynamic, copy_outputs)

    def capture(self, name: str, *inputs: Any) -> None:
        """Prepare `name` for inputs shaped like these: run the optimized function until it settles (compiling
        it), then capture it as a CUDA graph when graphs are on. Raises on failure (callers fall back)."""
        function = self._functions[name]
        key = _key(inputs)
        if key in function.prepared:
            return
        started = time.perf_counter()
        on_cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if on_cuda else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(WARM_RUNS):
                function.optimized(*inputs)
        if side is not None:
            torch.cuda.current_stream(self.device).wait_stream(side)
        if self.cuda_graphs:
            function.graphs[key] = self._record(function.optimized, inputs)
        function.prepared.add(key)
        self.capture_seconds += time.perf_counter() - started

    def _record(self, fn: Callable[..., Tensors], inputs: tuple) -> _Graph:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        static = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = fn(*static)
        return _Graph(graph, tuple(x for x in static if isinstance(x, torch.Tensor)), outputs)

    def run(self, name: str, *inputs: Any) -> Tensors:
        """`name` on these inputs: graph replay, optimized or eager (see the module docstring)."""
        function = self._functions[name]
        key = _key(inputs)
        graph = function.graphs.get(key)
        optimized = function.optimized is not function.eager and (function.dynamic or key in function.prepared)
        if graph is None and not optimized:
            return function.eager(*inputs)
        try:
            return function.optimized(*inputs) if graph is None else _replay(graph, inputs, function.copy_outputs)
        except Exception as exc:  # a compiled or captured failure must not fail requests: run eagerly instead
            self.fall_back(f"{self.name} {name} at {list(key)}: {type(exc).__name__}: {exc}")
            return function.eager(*inputs)

    def captured(self, name: str) -> list:
        return sorted(self._functions[name].graphs)

    def prepared(self, name: str) -> int:
        return len(self._functions[name].prepared)

    def _drop_compile(self, reason: str) -> None:
        log.warning("%s runs without torch.compile: %s", self.name, reason)
        self.fallback_reason = reason
        self.compile_mode = self.inductor_mode = None

    def fall_back(self, reason: str) -> None:
        """Eager from now on: drop every graph and compiled function."""
        log.warning("%s falls back to eager execution: %s", self.name, reason)
        self.fallback_reason = reason
        for function in self._functions.values():
            function.prepared.clear()
            function.graphs.clear()
            function.optimized = function.eager
        self.compile_mode = self.inductor_mode = None
        self.cuda_graphs = False

    def status(self) -> dict:
        return {"compile_mode": self.compile_mode, "inductor_mode": self.inductor_mode,
                "cuda_graphs": self.cuda_graphs, "capture_seconds": round(self.capture_seconds, 3),
                "fallback_reason": self.fallback_reason}


def _replay(graph: _Graph, inputs: tuple, copy_outputs: bool) -> Tensors:
    for static, value in zip(graph.inputs, (x for x in inputs if isinstance(x, torch.Tensor))):
        static.copy_(value)
    graph.graph.replay()
    return tuple(x.clone() for x in graph.outputs) if copy_outputs else graph.outputs


def compile_function(fn: Callable, mode: str, shapes: int, dynamic: bool = False) -> Callable:
    """torch.compile `fn` with room for `shapes` specialisations (dynamo's default recompile limit is 8)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), shapes + 8))
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4 * (shapes + 8))
    return torch.compile(fn, mode=mode, dynamic=True if dynamic else None)
