"""Cropping a shared weight to its active block as one view, so that backward undoes it in one pass.

`weight[:o, :i]` in plain torch is two slices, and autograd undoes each one separately: a
zero-filled full-size gradient per sliced dimension, each copied into the next. `crop` takes the
block in every dimension at once (one strided view of the weight's storage), so backward writes
one zero-filled gradient and copies the block into it once. That is most of what a train step
through the supernet costs beyond the extracted network's.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def crop(tensor: Tensor, sizes: Sequence[int], starts: Sequence[int] = ()) -> Tensor:
    """The view of `tensor` of shape `sizes` beginning at index `starts` (default: 0 in every dimension).

    Dimensions after those named in `sizes` are kept whole; `tensor` itself is returned when the
    block is all of it. Works for any strides (contiguous or channels-last weights).
    """
    shape = tuple(tensor.shape)
    sizes = tuple(sizes) + shape[len(sizes) :]
    starts = tuple(starts) + (0,) * (len(shape) - len(starts))
    cropped = [d for d in range(len(shape)) if (starts[d], sizes[d]) != (0, shape[d])]
    if not cropped:
        return tensor
    if len(cropped) == 1:  # a plain slice: the cheapest backward of all
        d = cropped[0]
        return tensor.narrow(d, starts[d], sizes[d])
    strides = tensor.stride()
    offset = tensor.storage_offset() + sum(start * stride for start, stride in zip(starts, strides))
    return tensor.as_strided(sizes, strides, offset)
