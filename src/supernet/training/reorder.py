"""Channel re-ordering by importance before a shrinking phase (Once-for-All progressive shrinking).

Elastic sub-networks use the FIRST channels of every shared weight, so before smaller expand ratios
(or widths) start training, channels are sorted by L1 importance, most important first. Every
tensor that indexes the same channels is permuted with the same permutation (convs, BatchNorm
parameters and running statistics, squeeze-excite, gradients and the optimizer's per-parameter
state), so each sub-network that uses all of the permuted channels computes exactly what it did.

Permutations are named by the channels they move (`new[i] = old[perm[i]]`, CPU index tensors):
`stages.{s}.{b}.mid` the expanded channels of block b of stage s, `stages.{s}.{b}.se` its
squeeze-excite bottleneck, `stages.{s}.out` the output channels of stage s, `stem.out` the stem's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from supernet.model import Supernet
from supernet.nn.dynamic_blocks import DynamicConvBnAct, DynamicHead, DynamicMBConv
from supernet.nn.widths import block_mid_channels, se_width
from supernet.space import SearchSpace

# One step of a re-ordering: permute `tensor` along `dim` by `perm`.
_Op = tuple[Tensor, int, Tensor]


def reorder_channels(
    net: Supernet,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    expand: bool = True,
    width: bool = False,
    trained: SearchSpace | None = None,
) -> dict[str, Tensor]:
    """Sort channels by importance, most important first, in place; returns the permutations applied.

    `channel_order` says which channels are sorted and how; `permute_channels` how they move.
    """
    perms = channel_order(net, expand=expand, width=width, trained=trained)
    permute_channels(net, perms, optimizer)
    return perms


def channel_order(
    net: Supernet, *, expand: bool = True, width: bool = False, trained: SearchSpace | None = None
) -> dict[str, Tensor]:
    """The permutations that sort channels by L1 importance, descending (ties keep their order).

    trained: the space the earlier phases trained (OFA: the previous phase's). Its expand ratios cut
        each block's expanded channels (and squeeze-excite bottleneck) into nested groups, the first
        channels a smaller trained ratio uses, then the next ratio's additional ones, and so on;
        channels are sorted within each group only, so every trained sub-network keeps its function
        (a trained ratio still sees the same set of channels). Without it (or with only the largest
        ratio trained) the whole block is sorted, as OFA does when expand ratios first become elastic.

    expand: in every block whose expand-ratio choices exclude 1, the expanded (depthwise) channels
        by the L1 norm of the project conv's input columns, and the squeeze-excite bottleneck by
        the L1 norm of the SE expand conv's input columns (OFA's `re_organize_middle_weights`).
        Blocks whose choices include ratio 1 are skipped: their depthwise channels are the block's
        input channels, which only `width` may move.
    width: each stage's output channels by the L1 norm of its blocks' project-conv output rows,
        summed over the stage. Stages whose largest network adds one's output to the next's without
        a conv (equal maximum widths, and a conv-kind shortcut, which then only pools, or stride 1)
        get one permutation, from their summed importance; so does the stem when joined to the
        first stage this way, and it is left alone otherwise. Sub-networks narrower than the
        maximum see different channels afterwards, which is the point.
    """
    _check_modules(net)
    perms: dict[str, Tensor] = {}
    if expand:
        for s, stage in enumerate(net.stages):
            if _has_ratio_one(net, s):
                continue
            ratios = [max(net.space.stages[s].expand_ratios)] if trained is None else trained.stages[s].expand_ratios
            for b, block in enumerate(stage):
                c_in = block.expand_conv.weight.shape[1]  # blocks of stages without ratio 1 all expand
                mids = sorted({block_mid_channels(c_in, r) for r in ratios})
                perms[f"stages.{s}.{b}.mid"] = _order(_importance(block.project.weight, 1), mids)
                if block.se is not None:
                    # The mid permutation moves only the rows of the SE expand conv, so this is
                    # also the importance of the bottleneck channels once it is applied.
                    squeezes = sorted({se_width(m) for m in mids})
                    perms[f"stages.{s}.{b}.se"] = _order(_importance(block.se.expand.weight, 1), squeezes)
    if width:
        spaces = _space_names(net)
        group = _groups(net)
        importance: dict[int, Tensor] = {}
        for s, stage in enumerate(net.stages):
            row_l1 = sum(_importance(block.project.weight, 0) for block in stage)
            g = group[s + 1]
            importance[g] = importance[g] + row_l1 if g in importance else row_l1
        order = {g: _order(imp) for g, imp in importance.items()}
        perms.update({name: order[g] for name, g in zip(spaces, group) if g in order})
    return perms


def permute_channels(
    net: Supernet, perms: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Move channels by `perms` (named as `channel_order` names them) through every tensor indexing them.

    Gradients and each optimizer state tensor shaped like its parameter (momentum buffers, Adam
    moments) move too, so training continues as if the weights had always been stored in the new
    order. Raises ValueError for an unknown name, a tensor that is not a permutation of the right
    length, or spaces tied by a residual given different permutations; NotImplementedError for
    optimizer state of another shape or modules this function does not know; both before anything
    moves.
    """
    _check_modules(net)
    ops = _plan(net, perms)
    state = _checked_state(optimizer, ops)
    with torch.no_grad():
        for tensor, dim, perm in ops:
            _permute(tensor, dim, perm, state)


def _importance(weight: Tensor, dim: int) -> Tensor:
    """L1 norm of `weight` over every dimension but `dim`, in float64 on the CPU.

    float64 makes the ordering insensitive to summation order, so sorting already-sorted weights
    gives the identity; the CPU makes it the same on every device.
    """
    w = weight.detach().to("cpu", torch.float64).abs()
    return w.sum([d for d in range(w.dim()) if d != dim])


def _order(importance: Tensor, groups: list[int] | None = None) -> Tensor:
    """Indices sorting `importance` descending within each nested group [0, g1), [g1, g2), ...

    `groups` are the group ends (the last is the number of channels; ends beyond it are ignored).
    """
    n = len(importance)
    ends = sorted({min(g, n) for g in groups or []} | {n})
    parts, start = [], 0
    for end in ends:
        if end > start:
            parts.append(start + torch.sort(importance[start:end], descending=True, stable=True).indices)
            start = end
    return torch.cat(parts)


def _has_ratio_one(net: Supernet, stage: int) -> bool:
    return any(e == 1 for e in net.space.stages[stage].expand_ratios)


def _space_names(net: Supernet) -> list[str]:
    """Names of the channel spaces between layers: the stem's output, then each stage's."""
    return ["stem.out"] + [f"stages.{s}.out" for s in range(len(net.stages))]


def _groups(net: Supernet) -> list[int]:
    """Group index of each channel space; spaces in one group are tied by a conv-free residual.

    Ties only join neighbouring spaces, so each group is a run of consecutive spaces.
    """
    sizes = [net.stem.conv.weight.shape[0]] + [stage[0].project.weight.shape[0] for stage in net.stages]
    group = [0]
    for s, stage in enumerate(net.stages):
        first = stage[0]
        tied = sizes[s] == sizes[s + 1] and (first.shortcut_kind == "conv" or first.stride == 1)
        group.append(group[-1] if tied else group[-1] + 1)
    return group


def _bn_ops(bn: nn.BatchNorm2d, perm: Tensor) -> list[_Op]:
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return [(t, 0, perm) for t in tensors if t is not None]


def _mid_ops(block: DynamicMBConv, mid: Tensor) -> list[_Op]:
    """Everything indexing a block's expanded channels: expand out, depthwise, SE, project in."""
    ops: list[_Op] = []
    if block.expand_conv is not None:
        ops += [(block.expand_conv.weight, 0, mid), *_bn_ops(block.expand_bn, mid)]
    ops += [(block.depthwise.weight, 0, mid), *_bn_ops(block.depthwise_bn, mid)]
    ops.append((block.project.weight, 1, mid))
    if block.se is not None:
        ops += [
            (block.se.reduce.weight, 1, mid),
            (block.se.expand.weight, 0, mid),
            (block.se.expand.bias, 0, mid),
        ]
    return ops


def _input_ops(net: Supernet, s: int, b: int, perm: Tensor) -> list[_Op]:
    """Everything indexing the input channels of block `b` of stage `s`."""
    block = net.stages[s][b]
    ops: list[_Op] = []
    if block.expand_conv is not None:
        ops.append((block.expand_conv.weight, 1, perm))
    if block.shortcut_conv is not None:
        ops.append((block.shortcut_conv.weight, 1, perm))
    if _has_ratio_one(net, s):
        # With ratio 1 the depthwise layer runs on the input channels themselves, so the mid
        # channels move with the input; any beyond the input's (other ratios' only) stay put.
        max_mid = block.depthwise.weight.shape[0]
        ops += _mid_ops(block, torch.cat([perm, torch.arange(len(perm), max_mid)]))
    return ops


def _plan(net: Supernet, perms: Mapping[str, Tensor]) -> list[_Op]:
    """The tensor permutations that carry out `perms`, after validating them."""
    sizes: dict[str, int] = {"stem.out": net.stem.conv.weight.shape[0]}
    for s, stage in enumerate(net.stages):
        sizes[f"stages.{s}.out"] = stage[0].project.weight.shape[0]
        for b, block in enumerate(stage):
            if not _has_ratio_one(net, s):
                sizes[f"stages.{s}.{b}.mid"] = block.depthwise.weight.shape[0]
            if block.se is not None:
                sizes[f"stages.{s}.{b}.se"] = block.se.reduce.weight.shape[0]
    perms = {name: perm.detach().cpu() for name, perm in perms.items()}
    for name, perm in perms.items():
        if name not in sizes:
            raise ValueError(
                f"no channels called {name!r} to permute; known names look like {sorted(sizes)[:4]}"
            )
        n = sizes[name]
        if (
            perm.dtype != torch.long
            or perm.shape != (n,)
            or not torch.equal(perm.sort().values, torch.arange(n))
        ):
            raise ValueError(
                f"{name!r} needs a permutation of range({n}) as int64 indices, got {perm.dtype} of shape "
                f"{tuple(perm.shape)}"
            )
    spaces, group = _space_names(net), _groups(net)
    for a, b, ga, gb in zip(spaces, spaces[1:], group, group[1:]):
        if ga == gb and ((a in perms) != (b in perms) or a in perms and not torch.equal(perms[a], perms[b])):
            raise ValueError(
                f"{a!r} and {b!r} are added together by a residual in the largest network; "
                "give both the same permutation"
            )
    ops: list[_Op] = []
    if "stem.out" in perms:
        perm = perms["stem.out"]
        ops += [(net.stem.conv.weight, 0, perm), *_bn_ops(net.stem.bn, perm)]
        ops += _input_ops(net, 0, 0, perm)
    for s, stage in enumerate(net.stages):
        for b, block in enumerate(stage):
            if (mid := perms.get(f"stages.{s}.{b}.mid")) is not None:
                ops += _mid_ops(block, mid)
            if (squeeze := perms.get(f"stages.{s}.{b}.se")) is not None:
                reduce, excite = block.se.reduce, block.se.expand
                ops += [(reduce.weight, 0, squeeze), (reduce.bias, 0, squeeze), (excite.weight, 1, squeeze)]
        if (out := perms.get(f"stages.{s}.out")) is None:
            continue
        for b, block in enumerate(stage):
            ops += [(block.project.weight, 0, out), *_bn_ops(block.project_bn, out)]
            if block.shortcut_conv is not None:
                ops.append((block.shortcut_conv.weight, 0, out))
            if b + 1 < len(stage):
                ops += _input_ops(net, s, b + 1, out)
        if s + 1 < len(net.stages):
            ops += _input_ops(net, s + 1, 0, out)
        else:
            ops.append((net.head.expand.conv.weight, 1, out))
    return ops


def _check_modules(net: Supernet) -> None:
    """Refuse networks whose layout this module does not know, rather than permute them partially."""
    expected = [("stem", net.stem, DynamicConvBnAct), ("head", net.head, DynamicHead)]
    expected += [
        (f"stages.{s}.{b}", blk, DynamicMBConv) for s, st in enumerate(net.stages) for b, blk in enumerate(st)
    ]
    for name, module, cls in expected:
        if type(module) is not cls:
            raise NotImplementedError(
                f"channel re-ordering knows {cls.__name__} at {name!r}, got {type(module).__name__}; "
                "teach supernet.training.reorder which channels that module ties together"
            )


def _checked_state(
    optimizer: torch.optim.Optimizer | None, ops: list[_Op]
) -> Mapping[Tensor, dict[str, Any]]:
    """The optimizer's per-parameter state, once every entry of a moved parameter is known to follow."""
    if optimizer is None:
        return {}
    for tensor, _, _ in ops:
        for key, value in optimizer.state.get(tensor, {}).items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != tensor.shape:
                raise NotImplementedError(
                    f"optimizer state {key!r} has shape {tuple(value.shape)} but its parameter "
                    f"{tuple(tensor.shape)}; only state shaped like the parameter (momentum, Adam "
                    "moments) can be re-ordered with it"
                )
    return optimizer.state


def _permute(tensor: Tensor, dim: int, perm: Tensor, state: Mapping[Tensor, dict[str, Any]]) -> None:
    """Permute `tensor` in place along `dim`, with its gradient and same-shaped optimizer state."""
    perm = perm.to(tensor.device)
    tensor.copy_(tensor.index_select(dim, perm))
    if not isinstance(tensor, nn.Parameter):
        return
    if tensor.grad is not None:
        tensor.grad.copy_(tensor.grad.index_select(dim, perm))
    for value in state.get(tensor, {}).values():
        if isinstance(value, Tensor) and value.shape == tensor.shape:
            value.copy_(value.index_select(dim, perm.to(value.device)))
