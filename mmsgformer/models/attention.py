"""Attention modules of SG-Former: hybrid-scale (HSA), self-guided (SGA) and standard attention.

Every module takes the block's normalized tokens ``y (B, N, C)`` (row-major, ``N = H*W``), the
grid ``H, W`` and the incoming significance map, and returns ``(out (B, N, C), map or None)``.
The output is ``proj(attention_output + lepe)`` with ``lepe = lepe_conv(lepe_linear(y))``
(spec §3). Parameter names and registration order follow the official code (spec §15).
"""
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsgformer.ops import IMPLS, group_sizes_for, segment_layout, sg_aggregate
from .blocks import map_to_tokens, tokens_to_map
from .significance import (global_significance, local_significance, rank_tokens,
                           window_query_weights)

WINDOW_SIZE = 7  # hard-coded in every stage of the official code (spec Q1)

# Above this many attention-score elements the coarse HSA branch is evaluated in query chunks
# when no gradient is needed (large detection/segmentation inputs); never at 224/448 with
# ordinary batches, so the official operation order is kept there.
_GLOBAL_CHUNK_ELEMS = 1 << 24
_CHUNK_ELEMS = 1 << 19  # probabilities per chunk in that case (2 MiB in float32)


def _check_heads(dim: int, num_heads: int, groups: int = 1) -> int:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(f'embed dim {dim} must be divisible by num_heads={num_heads}')
    if num_heads % groups != 0:
        raise ValueError(f'num_heads={num_heads} must be even: hybrid-scale and self-guided '
                         f'attention split the heads into two equal groups')
    return dim // num_heads


# GEMMs narrower than this are left unfused: MKL runs them with other kernels whose float32
# rounding differs from the wide GEMM (it would change the first, bitwise-official map of tiny
# archs); from this width on the fused GEMM gives each column bitwise the same value.
_MIN_FUSED_WIDTH = 16


def _fused_projections(module: nn.Module, y: torch.Tensor, names: Sequence[str],
                       merge_last: int = 1) -> Optional[List[torch.Tensor]]:
    """The ``nn.Linear`` children ``names`` of ``module`` applied to the same ``y (B, N, C)`` as
    one GEMM; returns their outputs (column views of one buffer), or ``None`` when the layers
    should run separately (autograd enabled, a layer without bias, or a narrow layer). The last
    ``merge_last`` outputs come back as one view of their adjacent columns.

    The concatenated weight and bias are cached on ``module`` (not registered, so the state
    dict is unchanged) and rebuilt when a parameter is replaced or modified in place.
    """
    if torch.is_grad_enabled():
        return None
    layers = [getattr(module, n) for n in names]
    if any(m.bias is None or m.out_features < _MIN_FUSED_WIDTH for m in layers):
        return None
    params = [p for m in layers for p in (m.weight, m.bias)]
    key = (tuple(names), ) + tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = module.__dict__.setdefault('_fused_cache', {})
    entry = cache.get(names)
    if entry is None or entry[0] != key:
        entry = (key, torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers]))
        cache[names] = entry
    out = F.linear(y, entry[1], entry[2])
    widths = [m.out_features for m in layers]
    if merge_last > 1:
        widths = widths[:-merge_last] + [sum(widths[-merge_last:])]
    return list(out.split(widths, dim=-1))


class _LePEProj(nn.Module):
    """Shared tail: ``proj(o + lepe_conv(lepe_linear(y)))``. Subclasses call ``_build_tail``
    last in ``__init__`` so the parameter order matches the official one."""

    def _build_tail(self, dim: int) -> None:
        self.lepe_linear = nn.Linear(dim, dim)
        self.lepe_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def _lepe(self, y: torch.Tensor, H: int, W: int,
              lin: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N, C)``: ``lepe_conv(lin)`` with ``lin = lepe_linear(y)`` unless given (a fresh
        tensor)."""
        if lin is None:
            lin = self.lepe_linear(y)
        return map_to_tokens(self.lepe_conv(tokens_to_map(lin, H, W)))

    def _tail(self, o: torch.Tensor, y: torch.Tensor, H: int, W: int,
              lin: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.proj(self._lepe(y, H, W, lin).add_(o))


def _window_partition(x: torch.Tensor, H: int, W: int, window: int) -> torch.Tensor:
    """``(B, N, ch)`` row-major tokens -> ``(B*nW, window*window, ch)``, zero-padding the grid
    bottom/right to multiples of ``window``; windows row-major, tokens row-major inside."""
    B, _, ch = x.shape
    x = x.view(B, H, W, ch)
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    if Hp != H or Wp != W:
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
    if Hp != H or Wp != W:
        x = x[:, :H, :W]
    return x.reshape(B, H * W, ch)


@lru_cache(maxsize=32)
def _key_mask_cpu(H: int, W: int, window: int) -> torch.Tensor:
    mask, _ = window_query_weights(H, W, window, torch.device('cpu'), torch.float32)
    return mask


class HybridScaleAttention(_LePEProj):
    """Hybrid-scale attention (spec §5): heads split into a coarse and a window group.

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

    def _coarse(self, y: torch.Tensor, H: int, W: int, q1: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Coarse heads: ``(o1 (B, N, C/2), global significance (B, H, W))``; ``q1`` is
        ``self.q1(y)`` when precomputed."""
        B, N, C = y.shape
        g, d = self.num_heads // 2, self.head_dim
        q1 = (self.q1(y) if q1 is None else q1).reshape(B, N, g, d).transpose(1, 2)
        x = self.sr(tokens_to_map(y, H, W))
        Hr, Wr = x.shape[-2:]
        x = self.act(self.norm(map_to_tokens(x)))
        kv = self.kv1(x).reshape(B, Hr * Wr, 2, g, d).permute(2, 0, 3, 1, 4)
        k1, v1 = kv[0], kv[1]
        Nk = Hr * Wr
        if torch.is_grad_enabled() or B * g * N * Nk <= _GLOBAL_CHUNK_ELEMS:
            # (q k^T) * scale, scaled in place: same rounding as the official code
            attn = (q1 @ k1.transpose(-2, -1)).mul_(self.scale)
            attn = attn.softmax(dim=-1)
            o1 = (attn @ v1).transpose(1, 2).reshape(B, N, C // 2)
            sig = global_significance(attn.detach(), (Hr, Wr), (H, W))
            return o1, sig
        # Inference on large inputs: the same math with queries in cache-sized chunks, so the
        # (N, Nk) probabilities are never materialized (memory) and stay in cache (speed).
        chunk = max(1, _CHUNK_ELEMS // (B * g * Nk))
        kt = k1.transpose(-2, -1)
        o1 = y.new_empty(B, N, g, self.head_dim)
        col_sum = y.new_zeros(B, g, Nk)
        for s in range(0, N, chunk):
            a = (q1[:, :, s:s + chunk] @ kt).mul_(self.scale).softmax(dim=-1)
            o1[:, s:s + chunk] = (a @ v1).transpose(1, 2)
            col_sum += a.sum(2)
        s = (col_sum.mean(1) / N).reshape(B, 1, Hr, Wr)
        sig = F.interpolate(s, size=(H, W), mode='nearest')[:, 0]
        return o1.reshape(B, N, C // 2), sig

    def _local(self, y: torch.Tensor, H: int, W: int, q2: Optional[torch.Tensor] = None,
               kv2: Optional[torch.Tensor] = None, q2kv2: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Window heads: ``(o2 (B, N, C/2), local significance (B, H, W))``; ``q2, kv2`` are
        ``self.q2(y), self.kv2(y)`` when precomputed, or ``q2kv2 (B, N, 3C/2)`` both side by
        side (one fused GEMM output: then one window partition copies both)."""
        B, N, C = y.shape
        g, d, w = self.num_heads // 2, self.head_dim, WINDOW_SIZE
        if q2kv2 is not None:
            q2, kv2 = _window_partition(q2kv2, H, W, w).split([C // 2, C], -1)
        else:
            if q2 is None or kv2 is None:
                q2, kv2 = self.q2(y), self.kv2(y)
            q2, kv2 = _window_partition(q2, H, W, w), _window_partition(kv2, H, W, w)
        nwin, L = q2.shape[:2]
        q2 = q2.view(nwin, L, g, d).transpose(1, 2)
        kv2 = kv2.view(nwin, L, 2, g, d).permute(2, 0, 3, 1, 4)
        k2, v2 = kv2[0], kv2[1]
        attn = (q2 @ k2.transpose(-2, -1)).mul_(self.scale)
        padded = H % w != 0 or W % w != 0
        qmask = qcount = None
        if padded:
            qmask = _key_mask_cpu(H, W, w).to(device=y.device, dtype=attn.dtype)
            qcount = qmask.sum(1, keepdim=True)
            nW = qmask.shape[0]
            key_bias = torch.zeros_like(qmask).masked_fill(qmask == 0, float('-inf'))
            attn = (attn.view(B, nW, g, L, L) + key_bias[None, :, None, None, :])
            attn = attn.view(nwin, g, L, L)
        attn = attn.softmax(dim=-1)
        o2 = (attn @ v2).transpose(1, 2).reshape(nwin, L, C // 2)
        o2 = _window_reverse(o2, B, H, W, w)
        sig = local_significance(attn.detach(), B, H, W, w, qmask, qcount)
        return o2, sig

    def forward(self, y: torch.Tensor, H: int, W: int,
                significance: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``y (B, H*W, C)`` -> ``(out (B, H*W, C), significance (B, H, W))``."""
        fused = _fused_projections(self, y, ('q1', 'lepe_linear', 'q2', 'kv2'), merge_last=2)
        if fused is None:
            q1, lin = self.q1(y), self.lepe_linear(y)
            o2, s_local = self._local(y, H, W)
        else:
            q1, lin, q2kv2 = fused
            o2, s_local = self._local(y, H, W, q2kv2=q2kv2)
        o1, s_global = self._coarse(y, H, W, q1)
        # proj(cat([o1, o2]) + lepe), adding the halves into lepe in place (no concat buffer)
        lepe = self._lepe(y, H, W, lin)
        half = self.dim // 2
        lepe[..., :half] += o1
        lepe[..., half:] += o2
        return self.proj(lepe), s_local + s_global


class SelfGuidedAttention(_LePEProj):
    """Self-guided attention (spec §6): full-resolution queries, significance-aggregated keys.

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
        q, lin = _fused_projections(self, y, ('q', 'lepe_linear')) or (self.q(y), None)
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
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        o = o.transpose(1, 2).reshape(B, N, C)
        return self._tail(o, y, H, W, lin), None


class StandardAttention(_LePEProj):
    """Global multi-head self-attention of stage 4 (spec §7).

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
        q, kv, lin = (_fused_projections(self, y, ('q', 'kv', 'lepe_linear'))
                      or (self.q(y), self.kv(y), None))
        q = q.reshape(B, N, h, d).transpose(1, 2)
        kv = kv.reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=self.scale)
        o = o.transpose(1, 2).reshape(B, N, C)
        return self._tail(o, y, H, W, lin), None


__all__ = ['HybridScaleAttention', 'SelfGuidedAttention', 'StandardAttention', 'WINDOW_SIZE']
