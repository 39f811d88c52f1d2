"""Training's and evaluation's fully connected layers, computed the same to the last bit whatever the thread count.

With two or more threads, the BLAS library PyTorch uses on the CPU may split a matrix product's
sum over the batch (a small layer's weight gradient: fc3's 10 × 84 sums 128 products) among
threads and add the parts in another order: the gradient differs in its last bits, and after a
few hundred steps the trained model in its accuracy.  So a sweep's one-thread points and a
two-thread ``dvc repro`` would give different results for the same params, under the same DVC
stage hash.  The same holds for a test batch of a few images (5 to 11 here) without gradients.
Here each product of a training step, and of the forward passes that measure accuracy
(:mod:`sparsenet.training_forward` calls :func:`linear`), runs on one thread, in one fixed order;
the convolutions keep every core (:mod:`sparsenet.conv_block` sums in a fixed order already).
Other inference — ``model(x)``, the speed measurements' eager PyTorch among it — is left as
PyTorch runs it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch (and its BLAS) on one thread inside the block; the count is restored after."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Linear(torch.autograd.Function):
    """``x @ weight.T + bias``, forward and backward, each product on one thread."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        with one_thread():
            return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        with one_thread():
            if ctx.needs_input_grad[0]:
                grad_x = grad @ weight
            if ctx.needs_input_grad[1]:
                grad_weight = grad.t() @ x
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` whose values and gradients do not depend on the thread count."""
    return _Linear.apply(x, weight, bias)
