"""Focal self-attention (Focal Transformer v1): fine window + surroundings + pooled windows.

One query window of ``ws x ws`` tokens attends, in one softmax, to

1. its own ``ws^2`` tokens (Swin relative-position bias table),
2. the fine surroundings: the official model builds them from four ``torch.roll`` copies of the
   key/value map and a fixed index list, which yields the 120 ring tokens of the
   ``(ws + 2 es)^2`` neighbourhood plus 12 duplicates (132 keys for ws=7, es=3) with a dense
   learned bias ``(1, nH, ws^2, 132)``. Here the same 132 keys, duplicates included and in the
   official order, are read with one precomputed gather (:func:`neighbour_offsets`), no rolls;
3. the coarse level: the map is cut into ``ws x ws`` windows, each pooled to one token
   (``pool_method``), projected by the same ``qkv`` Linear, and every query window reads the
   ``fw x fw`` pooled tokens centred on its own position (official: ``nn.Unfold``).

The gather indices and the additive key masks depend only on the map size, so they are built once
per stage (:func:`focal_geometry`, cached) and shared by its blocks.

Border handling (``border_mode``):

* ``'official'`` reproduces the official code: the map is zero-padded to a multiple of ``ws``
  and padded tokens are *not* masked; the surroundings wrap cyclically around the padded map;
  pooled keys outside the pooled grid are zero keys/values with ``-100`` added to their logits.
* ``'masked'``: every key whose position lies outside the real (unpadded) map - padded tokens,
  surroundings beyond the border, pooled windows that contain no real token - gets
  :data:`MASKED_LOGIT` (its softmax weight underflows to exactly 0), so the output at real tokens
  does not depend on the amount of padding. A border window that is only partly real is pooled
  over the zero-padded window (padded positions add 0 to the fc/conv sums), which depends only
  on its real tokens.
"""
import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_

from .fast_paths import is_tracing, split_for_cache

__all__ = ['BORDER_MODES', 'POOL_METHODS', 'OFFICIAL_POOL_MASK', 'MASKED_LOGIT',
           'OFFICIAL_INDEX_BUFFERS',
           'neighbour_offsets', 'relative_position_index', 'FocalGeometry', 'focal_geometry',
           'FocalAttention']

BORDER_MODES = ('official', 'masked')
POOL_METHODS = ('fc', 'mean', 'max', 'conv', 'none')
#: Logit offset the official code adds to pooled keys outside the pooled grid (not -inf).
OFFICIAL_POOL_MASK = -100.0
#: Logit offset of masked keys in ``border_mode='masked'``: exp(-1e4) is exactly 0 in float32/64,
#: yet finite, so a fully masked row (impossible with minimal padding) cannot produce NaN.
MASKED_LOGIT = -1e4

#: Official index buffers (persistent in official checkpoints): recomputed here, dropped on load.
OFFICIAL_INDEX_BUFFERS = ('relative_position_index', 'valid_ind_rolled',
                          'relative_position_index_0')


def neighbour_offsets(window_size: int, expand_size: int) -> torch.Tensor:
    """Offsets ``(n, 2)`` (row, col) of the fine surroundings relative to a window's top-left.

    Reproduces the official four rolls (shifts ``(-es,-es), (-es,+es), (+es,-es), (+es,+es)``)
    followed by ``valid_ind_rolled``: for roll ``(sy, sx)`` the rolled window cell ``(i, j)`` holds
    token ``(i - sy, j - sx)`` and is kept when its row or column is in the expanded band.
    For ws=7, es=3: n = 132 (120 ring cells + 12 duplicates), rows/cols in -3..9.

    Computed in Python integers: the table has a static size also while the model is traced or
    exported (a boolean-mask selection on tensors would give it a data-dependent size there).
    """
    if not 0 < expand_size < window_size:
        raise ValueError(f'expand_size={expand_size} must satisfy 0 < expand_size < '
                         f'window_size={window_size} to have surroundings')
    ws, es = window_size, expand_size
    pairs = []
    for sy, sx in ((-es, -es), (-es, es), (es, -es), (es, es)):
        for i in range(ws):  # rolled window cells, row-major
            for j in range(ws):
                keep_row = i >= ws - es if sy < 0 else i < es
                keep_col = j >= ws - es if sx < 0 else j < es
                if keep_row or keep_col:
                    pairs.append((i - sy, j - sx))
    # explicit device: right under `torch.device('meta')` too
    return torch.tensor(pairs, dtype=torch.long, device='cpu')


def relative_position_index(q_size: int, k_size: int) -> torch.Tensor:
    """Index ``(q_size^2, k_size^2)`` into a ``((q_size + k_size - 1)^2, ...)`` bias table.

    ``idx = (yq - yk + k_size - 1) * (q_size + k_size - 1) + (xq - xk + k_size - 1)`` with query
    and key positions row-major in their own ``q_size x q_size`` / ``k_size x k_size`` grids
    (the official ``get_relative_position_index``; Swin's index for ``q_size == k_size``).
    """
    rq, rk = torch.arange(q_size, device='cpu'), torch.arange(k_size, device='cpu')
    qy, qx = torch.meshgrid(rq, rq, indexing='ij')
    ky, kx = torch.meshgrid(rk, rk, indexing='ij')
    dy = qy.flatten()[:, None] - ky.flatten()[None, :] + k_size - 1
    dx = qx.flatten()[:, None] - kx.flatten()[None, :] + k_size - 1
    return dy * (q_size + k_size - 1) + dx


@dataclass(frozen=True)
class FocalGeometry:
    """Where each query window reads its keys, for one map size (shared by a stage's blocks).

    Attributes:
        hw_shape: real map size ``(H, W)``.
        padded_shape: ``(Hp, Wp)``, multiples of the window size, ``>= (H, W)``.
        pooled_shape: pooled grid ``(Hp // ws, Wp // ws)``, or ``(0, 0)`` without a coarse level.
        expand: whether the fine surroundings are used (``es > 0`` and ``min(H, W) > ws``).
        index: ``(nW * S,)`` int64 rows of the key source ``[padded map (Hp*Wp) | pooled grid
            (nWh*nWw) | one zero row]``; ``S`` keys per window in the official order.
        mask: ``(nW, S)`` float32 additive logit mask (0, -100 or :data:`MASKED_LOGIT`).
    """
    hw_shape: Tuple[int, int]
    padded_shape: Tuple[int, int]
    pooled_shape: Tuple[int, int]
    expand: bool
    index: torch.Tensor
    mask: torch.Tensor

    @property
    def num_windows(self) -> int:
        return self.mask.shape[0]

    @property
    def num_keys(self) -> int:
        return self.mask.shape[1]


def focal_geometry(hw_shape: Tuple[int, int], window_size: int, expand_size: int,
                   focal_window: int, pooled: bool, border_mode: str = 'official',
                   padded_shape: Optional[Tuple[int, int]] = None,
                   device: Optional[torch.device] = None) -> FocalGeometry:
    """Key gather indices and masks of focal attention on an ``H x W`` map.

    Args:
        hw_shape: real map size ``(H, W)``, both >= 1.
        window_size, expand_size, focal_window: ``ws``, ``es`` and ``fw`` of the stage.
        pooled: whether the coarse (pooled-window) level is used.
        border_mode: ``'official'`` or ``'masked'`` (see the module docstring).
        padded_shape: ``(Hp, Wp)``; default the smallest multiples of ``ws``. Larger multiples are
            allowed (used to test that ``'masked'`` is padding-independent).
        device: device of the returned tensors.
    """
    H, W = (int(s) for s in hw_shape)
    if H < 1 or W < 1:
        raise ValueError(f'hw_shape={tuple(hw_shape)} must be positive')
    if border_mode not in BORDER_MODES:
        raise ValueError(f'border_mode={border_mode!r} must be one of {BORDER_MODES}')
    ws = window_size
    if padded_shape is None:
        padded_shape = (math.ceil(H / ws) * ws, math.ceil(W / ws) * ws)
    Hp, Wp = (int(s) for s in padded_shape)
    if Hp % ws or Wp % ws or Hp < H or Wp < W:
        raise ValueError(f'padded_shape={(Hp, Wp)} must be multiples of window_size={ws} '
                         f'and >= hw_shape={(H, W)}')
    device = torch.device('cpu') if device is None else torch.device(device)
    args = (H, W, Hp, Wp, ws, expand_size, focal_window, bool(pooled), border_mode == 'masked',
            str(device))
    if is_tracing():  # no fake or traced tensor may enter the cache
        return _cached_geometry.__wrapped__(*args)
    return _cached_geometry(*args)


@functools.lru_cache(maxsize=32)
def _cached_geometry(H: int, W: int, Hp: int, Wp: int, ws: int, es: int, fw: int, pooled: bool,
                     masked: bool, device: str) -> FocalGeometry:
    nWh, nWw = Hp // ws, Wp // ws
    expand = es > 0 and min(H, W) > ws
    cpu = torch.device('cpu')
    r = torch.arange(ws, device=cpu)
    rows, cols = torch.meshgrid(r, r, indexing='ij')
    offsets = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    if expand:
        offsets = torch.cat([offsets, neighbour_offsets(ws, es)])
    # absolute (unwrapped) key positions of every window: (nWh, nWw, S_fine)
    ys = (torch.arange(nWh, device=cpu) * ws)[:, None, None] + offsets[:, 0]
    xs = (torch.arange(nWw, device=cpu) * ws)[None, :, None] + offsets[:, 1]
    ys, xs = torch.broadcast_tensors(ys, xs)
    num_map = Hp * Wp
    zero_row = num_map + (nWh * nWw if pooled else 0)
    if masked:
        valid = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        index = torch.where(valid, ys * Wp + xs, torch.full_like(ys, zero_row))
        mask = torch.where(valid, 0.0, MASKED_LOGIT)
    else:  # cyclic wrap around the padded map, nothing masked (torch.roll semantics)
        index = (ys % Hp) * Wp + xs % Wp
        mask = torch.zeros(index.shape, device=cpu)
    if pooled:
        r = torch.arange(fw, device=cpu) - fw // 2
        ky, kx = torch.meshgrid(r, r, indexing='ij')
        py = torch.arange(nWh, device=cpu)[:, None, None] + ky.flatten()
        px = torch.arange(nWw, device=cpu)[None, :, None] + kx.flatten()
        py, px = torch.broadcast_tensors(py, px)
        # pooled windows with at least one real token (masked) / inside the padded grid (official)
        grid_h, grid_w = (math.ceil(H / ws), math.ceil(W / ws)) if masked else (nWh, nWw)
        valid = (py >= 0) & (py < grid_h) & (px >= 0) & (px < grid_w)
        p_index = torch.where(valid, num_map + py * nWw + px, torch.full_like(py, zero_row))
        p_mask = torch.where(valid, 0.0, MASKED_LOGIT if masked else OFFICIAL_POOL_MASK)
        index = torch.cat([index, p_index], dim=-1)
        mask = torch.cat([mask, p_mask], dim=-1)
    num_keys = index.shape[-1]
    return FocalGeometry(
        hw_shape=(H, W), padded_shape=(Hp, Wp),
        pooled_shape=(nWh, nWw) if pooled else (0, 0), expand=expand,
        index=index.reshape(-1).contiguous().to(device),
        mask=mask.reshape(nWh * nWw, num_keys).float().contiguous().to(device))


def _drop_official_index_buffers(state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: official checkpoints store the (recomputed) index buffers."""
    for name in OFFICIAL_INDEX_BUFFERS:
        state_dict.pop(prefix + name, None)


class FocalAttention(nn.Module):
    """Focal self-attention of one block on a padded map (official ``WindowAttention``).

    Parameter names and shapes follow the official model (``relative_position_bias_table``,
    ``relative_position_bias_table_to_neighbors``, ``relative_position_bias_table_to_windows.0``,
    ``qkv``, ``proj``); the index tables are non-persistent buffers. The neighbour table exists
    whenever ``expand_size > 0`` (the official model drops it when its construction-time map is
    not larger than the window); it is only used when the map is (``FocalGeometry.expand``).

    Args:
        embed_dims: channels ``C``; must be divisible by ``num_heads``.
        num_heads: heads ``nH``.
        window_size: ``ws``.
        expand_size: ``es`` (0 disables the surroundings).
        focal_window: ``fw``, odd: pooled keys per window are ``fw^2``.
        pooled: whether the coarse level exists (focal_levels == 2 and pool_method != 'none').
        qkv_bias: bias of the qkv Linear.
        qk_scale: logit scale; default ``head_dim ** -0.5``.

    Windows are processed in chunks of at most :attr:`chunk_bytes` (on a GPU
    :attr:`device_chunk_bytes`) of gathered keys/values and mask per
    ``scaled_dot_product_attention`` call (same result, lower peak memory).
    """

    #: byte budget of one attention call (keys/values + mask) on the CPU; a class attribute,
    #: tunable
    chunk_bytes = 16 * 2**20
    #: the same elsewhere: on a GPU each chunk is kernel launches of its own
    #: (:func:`mmsgformer.models.fast_paths.split_for_cache`), so one call takes far more
    device_chunk_bytes = 512 * 2**20

    def __init__(self, embed_dims: int, num_heads: int, window_size: int = 7,
                 expand_size: int = 3, focal_window: int = 7, pooled: bool = True,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} must be divisible by '
                             f'num_heads={num_heads}')
        if focal_window < 1 or focal_window % 2 == 0:
            raise ValueError(f'focal_window={focal_window} must be a positive odd number')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.expand_size = expand_size
        self.focal_window = focal_window
        self.pooled = pooled
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        ws2 = window_size * window_size

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer('relative_position_index',
                             relative_position_index(window_size, window_size), persistent=False)
        if expand_size > 0:
            num_nb = neighbour_offsets(window_size, expand_size).shape[0]
            self.relative_position_bias_table_to_neighbors = nn.Parameter(
                torch.zeros(1, num_heads, ws2, num_nb))
            trunc_normal_(self.relative_position_bias_table_to_neighbors, std=.02)
        if pooled:
            table = nn.Parameter(torch.zeros(num_heads, (window_size + focal_window - 1) ** 2))
            trunc_normal_(table, std=.02)
            self.relative_position_bias_table_to_windows = nn.ParameterList([table])
            self.register_buffer('relative_position_index_0',
                                 relative_position_index(window_size, focal_window),
                                 persistent=False)
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self._register_load_state_dict_pre_hook(_drop_official_index_buffers)

    def init_tables(self) -> None:
        """Official table init: in-window table zeros, the others trunc-normal(0.02)."""
        nn.init.zeros_(self.relative_position_bias_table)
        if self.expand_size > 0:
            trunc_normal_(self.relative_position_bias_table_to_neighbors, std=.02)
        if self.pooled:
            trunc_normal_(self.relative_position_bias_table_to_windows[0], std=.02)

    def attention_bias(self, expand: bool) -> torch.Tensor:
        """Per-head logit bias ``(nH, ws^2, S)`` for keys [window | surroundings | pooled]."""
        ws2 = self.window_size ** 2
        bias = self.relative_position_bias_table.index_select(
            0, self.relative_position_index.view(-1))
        parts = [bias.view(ws2, ws2, -1).permute(2, 0, 1)]
        if expand:
            parts.append(self.relative_position_bias_table_to_neighbors[0])
        if self.pooled:
            table = self.relative_position_bias_table_to_windows[0]
            parts.append(table.index_select(1, self.relative_position_index_0.view(-1)).view(
                self.num_heads, ws2, self.focal_window ** 2))
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor, pooled: Optional[torch.Tensor],
                geometry: FocalGeometry) -> torch.Tensor:
        """Attend on a padded map.

        Args:
            x: normed, zero-padded map ``(B, Hp, Wp, C)``.
            pooled: pooled windows ``(B, Hp/ws, Wp/ws, C)`` or None without coarse level.
            geometry: from :func:`focal_geometry` for this map.

        Returns:
            ``(B, Hp, Wp, C)``.
        """
        B, Hp, Wp, C = x.shape
        nH, hd, ws = self.num_heads, C // self.num_heads, self.window_size
        nWh, nWw = Hp // ws, Wp // ws
        nW, S = nWh * nWw, geometry.num_keys
        if geometry.expand and self.expand_size == 0:
            raise ValueError('geometry uses surroundings but this attention has expand_size=0')
        if (pooled is not None) != self.pooled:
            raise ValueError(f'pooled map given={pooled is not None} but pooled={self.pooled}')

        qkv = self.qkv(x)
        # queries, window-major inside each head: (B, nH, nW, ws^2, hd)
        q = qkv[..., :C].reshape(B, nWh, ws, nWw, ws, nH, hd).permute(0, 5, 1, 3, 2, 4, 6)
        q = q.reshape(B, nH, nW, ws * ws, hd)
        # key/value source [map | pooled | zero row] as (2, B, nH, N, hd), then one gather
        num_map, num_pool = Hp * Wp, (nW if pooled is not None else 0)
        src = qkv.new_empty(2, B, nH, num_map + num_pool + 1, hd)
        src[:, :, :, :num_map] = qkv[..., C:].reshape(B, num_map, 2, nH, hd).permute(
            2, 0, 3, 1, 4)
        if pooled is not None:  # pooled k, v through the same qkv Linear (q part not needed)
            b_kv = None if self.qkv.bias is None else self.qkv.bias[C:]
            kv_pool = F.linear(pooled, self.qkv.weight[C:], b_kv).to(src.dtype)
            src[:, :, :, num_map:-1] = kv_pool.reshape(B, num_pool, 2, nH, hd).permute(
                2, 0, 3, 1, 4)
        src[:, :, :, -1] = 0
        bias = self.attention_bias(geometry.expand).to(q.dtype)  # (nH, ws^2, S)
        mask = geometry.mask.to(q.dtype)  # (nW, S)
        # windows per SDPA call, so that the gathered keys/values and the mask of one call stay
        # under `chunk_bytes` (large fresh allocations cost page faults on CPU); Python ints from
        # static sizes (S too: see neighbour_offsets), so a traced graph has fixed chunks
        per_window = (2 * B * C + nH * ws * ws) * S * q.element_size()
        budget = self.chunk_bytes if split_for_cache(q) else self.device_chunk_bytes
        step = max(1, min(nW, budget // per_window))
        outs = []
        for w0 in range(0, nW, step):
            n = min(step, nW - w0)
            kv = src.index_select(3, geometry.index[w0 * S:(w0 + n) * S])
            kv = kv.view(2, B, nH * n, S, hd)
            attn_mask = (bias[:, None] + mask[None, w0:w0 + n, None, :]).view(
                1, nH * n, ws * ws, S)
            q_chunk = q[:, :, w0:w0 + n].reshape(B, nH * n, ws * ws, hd)
            out = F.scaled_dot_product_attention(q_chunk, kv[0], kv[1], attn_mask=attn_mask,
                                                 scale=self.scale)
            outs.append(out.view(B, nH, n, ws * ws, hd))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        out = out.view(B, nH, nWh, nWw, ws, ws, hd).permute(0, 2, 4, 3, 5, 1, 6)
        if is_tracing():
            # an explicit copy: the reshape below is recorded as a view when SDPA's traced output
            # strides allow one (CPU flash kernel layout), and the strides of the decomposed SDPA
            # the ONNX exporter translates do not (`contiguous()` would be a no-op in the trace)
            out = out.clone(memory_format=torch.contiguous_format)
        return self.proj(out.reshape(B, Hp, Wp, C))
