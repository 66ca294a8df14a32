"""The graph runner on the CPU: eager by default, optimized only where prepared (or dynamic), and any failure of
the optimized path falls back to eager with its reason. CUDA graph capture itself is covered by the GPU tests
of T3 and S3Gen."""

from __future__ import annotations

import pytest
import torch

from app.engine import graphs
from app.engine.graphs import GraphRunner


def double(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (x * 2,)


def fake_compile(calls: list, broken: bool = False):
    def compile_function(fn, mode, shapes, dynamic=False):
        def optimized(*args):
            calls.append(tuple(a.shape for a in args))
            if broken:
                raise RuntimeError("inductor exploded")
            return fn(*args)
        return optimized
    return compile_function


def test_without_a_compile_mode_everything_runs_eagerly():
    runner = GraphRunner("part", "cpu", "none")
    runner.register("double", double)
    assert not runner.optimizing
    (out,) = runner.run("double", torch.ones(3))
    assert out.tolist() == [2.0, 2.0, 2.0]
    assert runner.status() == {"compile_mode": None, "inductor_mode": None, "cuda_graphs": False,
                               "capture_seconds": 0.0, "fallback_reason": None}


@pytest.mark.parametrize("mode, inductor", [("reduce-overhead", None), ("default", "default"),
                                            ("max-autotune", "max-autotune-no-cudagraphs")])
def test_each_compile_mode_means_one_inductor_mode(mode, inductor):
    runner = GraphRunner("part", "cpu", mode, cuda_graphs=True)
    assert runner.inductor_mode == inductor and not runner.cuda_graphs  # no CUDA graphs off CUDA


def test_compiled_code_serves_only_prepared_shapes_unless_dynamic(monkeypatch):
    calls: list = []
    monkeypatch.setattr(graphs, "compile_function", fake_compile(calls))
    runner = GraphRunner("part", "cpu", "default")
    runner.register("double", double)
    runner.register("dynamic", double, dynamic=True)
    runner.run("double", torch.ones(3))
    assert calls == []  # a new shape never waits for a compile
    runner.capture("double", torch.ones(3))
    assert runner.prepared("double") == 1 and len(calls) == graphs.WARM_RUNS
    runner.run("double", torch.zeros(3))
    runner.run("double", torch.zeros(4))  # not prepared: eager
    assert calls[-1] == ((3,),) and len(calls) == graphs.WARM_RUNS + 1
    runner.run("dynamic", torch.zeros(5))
    assert calls[-1] == ((5,),)


def test_a_failing_optimized_run_falls_back_to_eager_for_good(monkeypatch):
    monkeypatch.setattr(graphs, "compile_function", fake_compile([], broken=True))
    runner = GraphRunner("part", "cpu", "default")
    runner.register("double", double, dynamic=True)
    (out,) = runner.run("double", torch.ones(2))
    assert out.tolist() == [2.0, 2.0]  # the request got its answer anyway
    status = runner.status()
    assert "inductor exploded" in status["fallback_reason"] and status["compile_mode"] is None
    assert not runner.optimizing


def test_an_unknown_mode_fails_at_registration_and_serves_eagerly():
    runner = GraphRunner("part", "cpu", "no-such-mode")
    runner.register("double", double)
    assert "no-such-mode" in runner.status()["fallback_reason"] and runner.compile_mode is None
    assert runner.run("double", torch.ones(1))[0].item() == 2.0
