"""FLOP accounting: a linear layer's forward + backward counts 3 x its matmul, double backward counts more, and
the matmul roof is a positive rate that a step's achieved FLOP/s is reported against."""

import pytest
import torch

from metatts.runtime.flops import count_flops, matmul_roof, throughput


def test_a_linear_step_counts_forward_and_both_backward_matmuls():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(64, 32), torch.randn(16, 64, requires_grad=True)
    matmul = 2 * 16 * 64 * 32
    assert count_flops(lambda: layer(x)) == matmul
    assert count_flops(lambda: layer(x).pow(2).sum().backward()) == 3 * matmul  # output, input and weight grads

    def second_order():
        (g,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
        g.pow(2).sum().backward()

    assert count_flops(second_order) > 3 * matmul  # the double backward's matmuls are counted too


def test_throughput_is_reported_against_a_measured_roof():
    roof = matmul_roof("cpu", size=128, seconds=0.02)
    assert roof.flops_per_s > 0 and roof.dtype == "float32" and roof.threads == torch.get_num_threads()
    report = throughput(10**9, 2.0, roof)
    assert report["achieved_flops_per_s"] == 5e8
    assert report["fraction_of_roof"] == pytest.approx(5e8 / roof.flops_per_s)
