"""crop: the active block of a shared weight, equal to plain slicing in value and gradient, in one backward node."""

from __future__ import annotations

import pytest
import torch

from supernet.nn.slicing import crop


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("sizes", "starts"),
    [((5, 3), ()), ((8, 3), ()), ((5, 6), ()), ((5, 1, 3, 3), (0, 0, 1, 1)), ((8, 6, 1, 3), (0, 0, 2, 0))],
)
def test_crop_equals_plain_slicing_in_value_and_gradient(sizes, starts, channels_last):
    base = torch.randn(8, 6, 5, 5)
    if channels_last:
        base = base.contiguous(memory_format=torch.channels_last)
    full_starts = tuple(starts) + (0,) * (4 - len(starts))
    full_sizes = tuple(sizes) + base.shape[len(sizes) :]
    index = tuple(slice(s, s + n) for s, n in zip(full_starts, full_sizes))
    w1 = base.clone().requires_grad_()
    w2 = base.clone().requires_grad_()
    upstream = torch.randn(full_sizes)
    out = crop(w1, sizes, starts)
    assert torch.equal(out, w2[index])
    (out * upstream).sum().backward()
    (w2[index] * upstream).sum().backward()
    assert torch.equal(w1.grad, w2.grad)
    assert torch.count_nonzero(w1.grad) == upstream.numel()


def test_crop_of_the_whole_tensor_is_the_tensor():
    w = torch.randn(4, 3, 3, 3)
    assert crop(w, (4, 3)) is w
    assert crop(w, (4, 3, 3, 3), (0, 0, 0, 0)) is w


def test_a_block_cropped_in_several_dimensions_backpropagates_through_one_node():
    w = torch.randn(8, 6, 5, 5, requires_grad=True)
    out = crop(w, (5, 4, 3, 3), (0, 0, 1, 1))
    assert out.data_ptr() == w[:, :, 1:, 1:].data_ptr()  # a view: no copy in forward
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "AccumulateGrad"
