"""The kernel counter behind the benchmarks' kernel figures: views are free, copies and compute are not."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.opcount import count_kernels


def test_views_launch_nothing_and_casts_count_only_when_they_copy():
    x = torch.randn(4, 6)
    assert count_kernels(lambda: x.view(6, 4).t().unsqueeze(0)[0, :2]).total == 0
    assert count_kernels(lambda: x.to(torch.float32)).total == 0  # same dtype: `to` returns x itself
    assert count_kernels(lambda: x.to(torch.bfloat16)).counts == {"aten::to": 1}


def test_composite_operators_count_once_and_arithmetic_counts_each_op():
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    assert count_kernels(lambda: F.linear(x, w)).total == 1
    assert count_kernels(lambda: F.rms_norm(x, (8,))).total == 1
    assert count_kernels(lambda: (x * 2 + 1).relu()).total == 3
    assert count_kernels(lambda: F.dropout(x, 0.1, training=False)).total == 0
