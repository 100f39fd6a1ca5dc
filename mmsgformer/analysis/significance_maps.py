"""From significance maps to pictures: ranks, segments and per-token group sizes.

A self-guided (SGA) block ranks the tokens of the preceding hybrid-scale block by ascending
significance (rank 0 = least significant) and cuts the ranks with
:func:`mmsgformer.ops.segment_layout`. A token whose rank falls in segment ``k`` is merged with
``g_k - 1`` other tokens into one key/value token, i.e. it is represented at ``1/g_k``
resolution. The functions here compute that per-token group size as an image-shaped map (the
"token reallocation" of the paper's Fig. 2). They are pure tensor functions: no model, no I/O.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from mmsgformer.ops import SegmentLayout, segment_layout

__all__ = ['rank_order', 'token_ranks', 'segment_of_ranks', 'segment_index_map',
           'group_size_map', 'reallocation_map', 'resize_nearest']


def _check_significance(significance: torch.Tensor) -> None:
    if significance.dim() != 3:
        raise ValueError(f'significance has shape {tuple(significance.shape)}; '
                         'it must be (B, H, W)')
    if significance.numel() == 0:
        raise ValueError(f'significance has shape {tuple(significance.shape)}; '
                         'B, H and W must all be >= 1')


def rank_order(significance: torch.Tensor) -> torch.Tensor:
    """Token indices in ascending significance, as the self-guided block sorts them.

    Args:
        significance: ``(B, H, W)`` map of a hybrid-scale block.

    Returns:
        ``(B, H*W)`` int64; entry ``p`` is the row-major token index of rank ``p``
        (``torch.sort(..., dim=1)`` with default arguments, like the backbone).
    """
    _check_significance(significance)
    return torch.sort(significance.flatten(1), dim=1).indices


def token_ranks(order: torch.Tensor) -> torch.Tensor:
    """Invert a rank order: the rank of every token.

    Args:
        order: ``(B, N)`` int64 permutation (``order[b, p]`` = token of rank ``p``).

    Returns:
        ``(B, N)`` int64 with ``ranks[b, order[b, p]] == p``.
    """
    if order.dim() != 2:
        raise ValueError(f'order has shape {tuple(order.shape)}; it must be (B, N)')
    if order.dtype not in (torch.int64, torch.int32):
        raise ValueError(f'order has dtype {order.dtype}; it must be an integer permutation')
    B, N = order.shape
    ranks = torch.full((B, N), -1, dtype=torch.int64, device=order.device)
    positions = torch.arange(N, device=order.device).expand(B, N)
    ranks.scatter_(1, order.long(), positions)
    if (ranks < 0).any():
        raise ValueError('order is not a permutation of 0..N-1 in every batch item '
                         '(some token index is missing or repeated)')
    return ranks


def segment_of_ranks(layout: SegmentLayout) -> torch.Tensor:
    """Segment index of every rank ``0..N-1`` under ``layout``: ``(N,)`` int64."""
    seg = torch.empty(layout.num_tokens, dtype=torch.int64)
    for k, (start, length) in enumerate(zip(layout.starts, layout.lengths)):
        seg[start:start + length] = k
    return seg


def segment_index_map(order: torch.Tensor, height: int, width: int,
                      sr_ratio: int) -> torch.Tensor:
    """Which segment each token falls in.

    Args:
        order: ``(B, H*W)`` rank order (see :func:`rank_order`).
        height, width: the token grid ``H, W`` (row-major tokens).
        sr_ratio: the stage's sr ratio (selects the segment rule).

    Returns:
        ``(B, H, W)`` int64 segment index, 0 = least significant segment.
    """
    if height < 1 or width < 1:
        raise ValueError(f'height={height}, width={width}: both must be >= 1')
    if order.dim() != 2 or order.shape[1] != height * width:
        raise ValueError(f'order has shape {tuple(order.shape)}; it must be '
                         f'(B, height*width) = (B, {height * width})')
    layout = segment_layout(height * width, sr_ratio)
    seg_of_rank = segment_of_ranks(layout).to(order.device)
    ranks = token_ranks(order)
    return seg_of_rank[ranks].view(order.shape[0], height, width)


def group_size_map(order: torch.Tensor, height: int, width: int,
                   sr_ratio: int) -> torch.Tensor:
    """Group size ``g_k`` of the segment each token falls in (1 = kept at full resolution).

    Args:
        order: ``(B, H*W)`` rank order (see :func:`rank_order`).
        height, width: the token grid.
        sr_ratio: the stage's sr ratio.

    Returns:
        ``(B, H, W)`` int64 map of group sizes; a token with value ``g`` is represented at
        ``1/g`` resolution in the self-guided block's keys/values.
    """
    seg = segment_index_map(order, height, width, sr_ratio)
    sizes = torch.tensor(segment_layout(height * width, sr_ratio).group_sizes,
                         dtype=torch.int64, device=seg.device)
    return sizes[seg]


def reallocation_map(significance: torch.Tensor, sr_ratio: int) -> torch.Tensor:
    """Per-token group sizes straight from a significance map.

    Args:
        significance: ``(B, H, W)`` map of the hybrid-scale block before the SGA block.
        sr_ratio: the stage's sr ratio.

    Returns:
        ``(B, H, W)`` int64 group sizes (see :func:`group_size_map`).
    """
    _check_significance(significance)
    _, H, W = significance.shape
    return group_size_map(rank_order(significance), H, W, sr_ratio)


def resize_nearest(grid: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, H, W)`` maps to ``(B, *size)`` (keeps the dtype)."""
    if grid.dim() != 3:
        raise ValueError(f'grid has shape {tuple(grid.shape)}; it must be (B, H, W)')
    if min(size) < 1:
        raise ValueError(f'size={tuple(size)}: both sides must be >= 1')
    out = F.interpolate(grid[:, None].double(), size=tuple(size), mode='nearest')[:, 0]
    return out.to(grid.dtype)
