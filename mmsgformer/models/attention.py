"""Attention modules of SG-Former: hybrid-scale (HSA), self-guided (SGA) and standard attention.

Every module takes the block's normalized tokens ``y (B, N, C)`` (row-major, ``N = H*W``), the
grid ``H, W`` and the incoming significance map, and returns ``(out (B, N, C), map or None)``.
The output is ``proj(attention_output + lepe)`` with ``lepe = lepe_conv(lepe_linear(y))``
(design §3). Parameter names and registration order follow the official code (design §15).

The modules spell out the plain computation; the faster ways to compute the same thing (fused
projections, flash-style attention with a chunked significance pass) live in
:mod:`mmsgformer.models.fast_paths` and are called at the marked places.
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsgformer.ops import IMPLS, group_sizes_for, segment_layout, sg_aggregate
from . import fast_paths
from .common import add_fresh, is_symbolic, map_to_tokens, tokens_to_map
from .significance import (global_significance, local_significance, rank_tokens,
                           window_query_weights)

WINDOW_SIZE = 7  # hard-coded in every stage of the official code (design Q1)


def _check_heads(dim: int, num_heads: int, groups: int = 1) -> int:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(f'embed dim {dim} must be divisible by num_heads={num_heads}')
    if num_heads % groups != 0:
        raise ValueError(f'num_heads={num_heads} must be even: hybrid-scale and self-guided '
                         f'attention split the heads into two equal groups')
    return dim // num_heads


def attention_and_key_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                           key_bias: Optional[torch.Tensor] = None,
                           query_mask: Optional[torch.Tensor] = None,
                           query_counts: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and the mean probability each key receives (plain computation).

    Args:
        q: ``(Bt, g, Nq, d)`` queries; ``k, v``: ``(Bt, g, Nk, d)``.
        scale: score scale (``d ** -0.5``).
        key_bias: additive score bias broadcastable to ``(Bt, 1, 1, Nk)``: ``-inf`` on padded
            keys, else 0; ``None``: no padding.
        query_mask, query_counts: ``(Bt, Nq)`` 1 for real queries / ``(Bt, 1)`` their number,
            when the queries include padding; ``None``: every query counts.

    Returns:
        ``(o (Bt, g, Nq, d), mass (Bt, Nk))``: ``mass`` is the probability tensor (detached)
        averaged over heads, then over the (real) queries, in the official operation order.
    """
    attn = (q @ k.transpose(-2, -1)).mul_(scale)  # scaled in place: the official rounding
    if key_bias is not None:
        attn = attn + key_bias
    attn = attn.softmax(dim=-1)
    p = attn.detach().mean(1)
    if query_mask is None:
        mass = p.mean(1)
    else:
        mass = (p * query_mask[:, :, None]).sum(1) / query_counts
    return attn @ v, mass


class _LePEProj(nn.Module):
    """Shared tail: ``proj(o + lepe_conv(lepe_linear(y)))``. Subclasses call ``_build_tail``
    last in ``__init__`` so the parameter order matches the official one."""

    def _build_tail(self, dim: int) -> None:
        self.lepe_linear = nn.Linear(dim, dim)
        self.lepe_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def _lepe(self, lin: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``lepe_conv(lin)`` for ``lin = lepe_linear(y) (B, N, C)``: a fresh ``(B, N, C)``."""
        return map_to_tokens(self.lepe_conv(tokens_to_map(lin, H, W)))

    def _tail(self, o: torch.Tensor, lin: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``proj(o + lepe_conv(lin))``, all ``(B, N, C)``."""
        return self.proj(add_fresh(self._lepe(lin, H, W), o))


def _window_partition(x: torch.Tensor, H: int, W: int, window: int) -> torch.Tensor:
    """``(B, N, ch)`` row-major tokens -> ``(B*nW, window*window, ch)``, zero-padding the grid
    bottom/right to multiples of ``window``; windows row-major, tokens row-major inside."""
    B, _, ch = x.shape
    x = x.view(B, H, W, ch)
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    if is_symbolic(H, W) or Hp != H or Wp != W:
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    x = x.view(B, Hp // window, window, Wp // window, window, ch).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, ch)


def _window_reverse(x: torch.Tensor, B: int, H: int, W: int, window: int) -> torch.Tensor:
    """Inverse of :func:`_window_partition`: ``(B*nW, window*window, ch) -> (B, N, ch)``,
    dropping padded positions."""
    ch = x.shape[-1]
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    x = x.view(B, Hp // window, Wp // window, window, window, ch).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(B, Hp, Wp, ch)
    if is_symbolic(H, W) or Hp != H or Wp != W:
        x = x[:, :H, :W]
    return x.reshape(B, H * W, ch)


def _padding_masks(batch: int, H: int, W: int, window: int, device: torch.device,
                   dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = window_query_weights(H, W, window, device, dtype)[0].repeat(batch, 1)
    key_bias = torch.zeros_like(mask).masked_fill_(mask == 0, float('-inf'))
    return mask, mask.sum(1, keepdim=True), key_bias[:, None, None, :]


_cached_padding_masks = lru_cache(maxsize=32)(_padding_masks)


def _window_padding(batch: int, H: int, W: int, window: int, device: torch.device,
                    dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which slots of the ``batch * nW`` windows hold real tokens when ``(H, W)`` is padded to
    multiples of ``window``: ``(query_mask (B*nW, w*w)`` 1 for real tokens, ``query_counts
    (B*nW, 1)``, ``key_bias (B*nW, 1, 1, w*w)`` ``-inf`` on padded keys), windows row-major
    per image. Made on ``device`` (a copy from the host would make the host wait for a GPU's
    queued work) and cached per batch, size, device and dtype, except while compiling, tracing
    or exporting (no fake tensor may enter the cache)."""
    if fast_paths.is_tracing():
        return _padding_masks(batch, H, W, window, device, dtype)
    return _cached_padding_masks(batch, H, W, window, device, dtype)


class HybridScaleAttention(_LePEProj):
    """Hybrid-scale attention (design §5): heads split into a coarse and a window group.

    * heads ``0..g-1``: queries of all tokens attend to ``sr``-aggregated tokens
      (``r x r`` strided conv, LayerNorm eps 1e-5, GELU);
    * heads ``g..h-1``: 7x7 window attention on full-resolution tokens.

    Returns ``(out (B, N, C), significance (B, H, W))``; the map (local + global part, from
    detached probabilities) feeds the next self-guided block.

    Generalization beyond the official sizes: grids not divisible by 7 are padded bottom/right,
    padded keys are masked and padded queries discarded; the local significance of a window is the
    mean over its real queries. ``sr`` floors ``H/r`` as in the official code.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if sr_ratio < 2:
            raise ValueError(f'sr_ratio={sr_ratio} must be >= 2 for hybrid-scale attention')
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, sr_ratio
        self.head_dim = _check_heads(dim, num_heads, 2)
        self.scale = self.head_dim ** -0.5
        self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.act = nn.GELU()
        self.q1 = nn.Linear(dim, dim // 2, bias=qkv_bias)
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
        self.q2 = nn.Linear(dim, dim // 2, bias=qkv_bias)
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)
        self._build_tail(dim)

    def forward(self, y: torch.Tensor, H: int, W: int,
                significance: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``y (B, H*W, C)`` -> ``(out (B, H*W, C), significance (B, H, W))``."""
        # q1 = y W_q1, lepe input, [q2 | kv2] = y [W_q2 | W_kv2]  (one GEMM on the fast path)
        q1, lin, q2kv2 = fast_paths.project(self, y, ('q1', ), ('lepe_linear', ), ('q2', 'kv2'))
        o1, s_global = self.coarse_branch(y, q1, H, W)
        o2, s_local = self.window_branch(q2kv2, H, W)
        # proj(cat([o1, o2]) + lepe)
        lepe = self._lepe(lin, H, W)
        if torch.is_grad_enabled():  # (an add into slices of lepe: a gradient clone in backward)
            mixed = torch.cat([o1, o2], dim=-1) + lepe
        else:  # inference: the halves added into lepe in place, no concatenation buffer
            mixed, half = lepe, self.dim // 2
            mixed[..., :half] += o1
            mixed[..., half:] += o2
        return self.proj(mixed), s_local + s_global

    def coarse_branch(self, y: torch.Tensor, q1: torch.Tensor, H: int, W: int
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Coarse heads: every query attends to the ``sr``-aggregated tokens.

        ``y (B, N, C)``, ``q1 (B, N, C/2)`` -> ``(o1 (B, N, C/2), global significance
        (B, H, W))``.
        """
        B, N, C = y.shape
        g, d = self.num_heads // 2, self.head_dim
        q1 = q1.reshape(B, N, g, d).transpose(1, 2)
        x = self.sr(tokens_to_map(y, H, W))
        Hr, Wr = x.shape[-2:]
        x = self.act(self.norm(map_to_tokens(x)))
        k1, v1 = self.kv1(x).reshape(B, Hr * Wr, 2, g, d).permute(2, 0, 3, 1, 4)
        attend = (fast_paths.attention_and_key_mass if fast_paths.use_fast_path(self)
                  else attention_and_key_mass)
        o1, mass = attend(q1, k1, v1, self.scale)
        return (o1.transpose(1, 2).reshape(B, N, C // 2),
                global_significance(mass, (Hr, Wr), (H, W)))

    def window_branch(self, q2kv2: torch.Tensor, H: int, W: int
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Window heads: 7x7 window attention on full-resolution tokens.

        ``q2kv2 (B, N, 3C/2)`` (``q2`` and ``kv2`` side by side: one window partition moves
        both) -> ``(o2 (B, N, C/2), local significance (B, H, W))``.
        """
        B, N, _ = q2kv2.shape
        C = self.dim
        g, d, w = self.num_heads // 2, self.head_dim, WINDOW_SIZE
        q2, kv2 = _window_partition(q2kv2, H, W, w).split([C // 2, C], -1)
        nwin, L = q2.shape[:2]
        q2 = q2.reshape(nwin, L, g, d).transpose(1, 2)
        k2, v2 = kv2.reshape(nwin, L, 2, g, d).permute(2, 0, 3, 1, 4)
        key_bias = qmask = qcount = None
        # padded windows: mask padded keys, average over real queries (always with symbolic sizes)
        if is_symbolic(H, W) or H % w or W % w:
            qmask, qcount, key_bias = _window_padding(B, H, W, w, q2.device, q2.dtype)
        attend = (fast_paths.attention_and_key_mass if fast_paths.use_fast_path(self)
                  else attention_and_key_mass)
        o2, mass = attend(q2, k2, v2, self.scale, key_bias, qmask, qcount)
        o2 = _window_reverse(o2.transpose(1, 2).reshape(nwin, L, C // 2), B, H, W, w)
        return o2, local_significance(mass, B, H, W, w)


class SelfGuidedAttention(_LePEProj):
    """Self-guided attention (design §6): full-resolution queries, significance-aggregated keys.

    The tokens are ranked by ascending significance twice (row-major and column-major listing,
    two ``torch.sort`` calls); each ranking is cut into segments by
    :func:`mmsgformer.ops.segment_layout` and every group of ``g_k`` consecutive ranks is merged by
    ``f_k = Linear(g_k, 1)`` along the token axis (:func:`mmsgformer.ops.sg_aggregate`). Heads
    ``0..g-1`` use ``kv1`` of the row-major aggregate, heads ``g..h-1`` ``kv2`` of the
    column-major one.

    ``forward(y (B, N, C), H, W, significance (B, H, W))`` -> ``(out (B, N, C), None)``.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True,
                 sga_impl: str = 'auto') -> None:
        super().__init__()
        if sga_impl not in IMPLS:
            raise ValueError(f'sga_impl={sga_impl!r} must be one of {IMPLS}')
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, sr_ratio
        self.head_dim = _check_heads(dim, num_heads, 2)
        self.scale = self.head_dim ** -0.5
        self.sga_impl = sga_impl
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)
        for k, g in enumerate(group_sizes_for(sr_ratio)):
            setattr(self, f'f{k + 1}', nn.Linear(g, 1))
        self.num_segments = len(group_sizes_for(sr_ratio))
        self._build_tail(dim)

    def aggregation_params(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(weight (sum_k g_k,), bias (K,))``: the ``f_k`` parameters concatenated."""
        fs = [getattr(self, f'f{k + 1}') for k in range(self.num_segments)]
        weight = torch.cat([f.weight.flatten() for f in fs])
        bias = torch.cat([f.bias for f in fs])
        return weight, bias

    def forward(self, y: torch.Tensor, H: int, W: int,
                significance: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, None]:
        if significance is None:
            raise RuntimeError('self-guided attention needs the significance map of the '
                               'preceding hybrid-scale block')
        B, N, C = y.shape
        h, g, d = self.num_heads, self.num_heads // 2, self.head_dim
        q, lin = fast_paths.project(self, y, ('q', ), ('lepe_linear', ))
        q = q.reshape(B, N, h, d).transpose(1, 2)
        order_row, order_col = rank_tokens(significance)
        layout = segment_layout(N, self.sr_ratio)
        weight, bias = self.aggregation_params()
        agg_row = sg_aggregate(y, order_row, weight, bias, layout, impl=self.sga_impl)
        agg_col = sg_aggregate(y, order_col, weight, bias, layout, impl=self.sga_impl)
        Nk = layout.num_out
        kv1 = self.kv1(agg_row).reshape(B, Nk, 2, g, d).permute(2, 0, 3, 1, 4)
        kv2 = self.kv2(agg_col).reshape(B, Nk, 2, g, d).permute(2, 0, 3, 1, 4)
        k = torch.cat([kv1[0], kv2[0]], dim=1)
        v = torch.cat([kv1[1], kv2[1]], dim=1)
        o = fast_paths.attention(self, q, k, v, self.scale)
        o = o.transpose(1, 2).reshape(B, N, C)
        return self._tail(o, lin, H, W), None


class StandardAttention(_LePEProj):
    """Global multi-head self-attention of stage 4 (design §7).

    ``forward(y (B, N, C), H, W, significance ignored)`` -> ``(out (B, N, C), None)``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = _check_heads(dim, num_heads, 1)
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self._build_tail(dim)

    def forward(self, y: torch.Tensor, H: int, W: int,
                significance: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, None]:
        B, N, C = y.shape
        h, d = self.num_heads, self.head_dim
        q, kv, lin = fast_paths.project(self, y, ('q', ), ('kv', ), ('lepe_linear', ))
        q = q.reshape(B, N, h, d).transpose(1, 2)
        kv = kv.reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
        o = fast_paths.attention(self, q, kv[0], kv[1], self.scale)
        o = o.transpose(1, 2).reshape(B, N, C)
        return self._tail(o, lin, H, W), None


__all__ = ['HybridScaleAttention', 'SelfGuidedAttention', 'StandardAttention', 'WINDOW_SIZE']
