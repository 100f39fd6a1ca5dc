"""SG-Former backbone (Ren et al., ICCV 2023) for mmpretrain, mmdet and mmsegmentation."""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmsgformer.ops import IMPLS, group_sizes_for
from . import fast_paths
from .attention import HybridScaleAttention, SelfGuidedAttention, StandardAttention
from .blocks import Block, ConvDownsample, ConvStem, tokens_to_map
from .common import (check_drop_path_rate, check_frozen_stages, check_image_batch,
                     check_out_indices, is_symbolic, select_arch)
from .pretrained import PretrainedInitMixin
from .significance import SignificanceRecord

_ARCH_KEYS = ('embed_dims', 'num_heads', 'depths')


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """The official fixed 2-D sin-cos table (MAE recipe), ``(1, grid_h*grid_w, dim)`` float32.

    Token ``m = yy*grid_w + xx``; channels ``[0, dim/2)`` encode the column ``xx``, channels
    ``[dim/2, dim)`` the row ``yy``; each half is ``[sin(p*w_k), cos(p*w_k)]`` with
    ``w_k = 10000^(-k/(dim/4))``, computed in float64 (design §8).
    """
    if dim % 4 != 0:
        raise ValueError(f'embed_dims[0]={dim} must be divisible by 4 for the 2-D sin-cos '
                         f'position table')
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64) / quarter
    omega = 1. / 10000 ** omega
    yy, xx = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                            torch.arange(grid_w, dtype=torch.float64), indexing='ij')

    def emb_1d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([emb_1d(xx), emb_1d(yy)], dim=1).float().unsqueeze(0)


def resize_pos_embed(pos_embed: torch.Tensor, src_hw: Tuple[int, int],
                     dst_hw: Tuple[int, int]) -> torch.Tensor:
    """Bicubic (``align_corners=False``) resize of a ``(1, Hs*Ws, C)`` table to ``(1, Hd*Wd, C)``.

    Returns the input unchanged when the grids are equal (and static: a symbolic grid is
    always resized, an identity at equal sizes).
    """
    if not is_symbolic(*dst_hw) and tuple(src_hw) == tuple(dst_hw):
        return pos_embed
    _, n, c = pos_embed.shape
    if n != src_hw[0] * src_hw[1]:
        raise ValueError(f'pos_embed has {n} tokens, not {src_hw[0]}x{src_hw[1]}')
    grid = pos_embed.reshape(1, src_hw[0], src_hw[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst_hw), mode='bicubic', align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def _as_pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f'{name}={value!r} must be an int or an (H, W) pair of ints')
    if min(pair) < 32:
        raise ValueError(f'{name}={value!r} must be >= 32 pixels per side')
    return pair


@dataclass
class StageParts:
    """The parts of one stage, held by the backbone under their official (checkpoint) names.

    Attributes:
        downsample: ``patch_embed{i+1}`` (:class:`ConvDownsample`); ``None`` for stage 0, whose
            input comes from the stem ``patch_embed1``.
        blocks: ``block{i+1}``: hybrid-scale / self-guided blocks alternating (stages 0-2), or
            standard-attention blocks (stage 3).
        norm: ``norm{i+1}``, the LayerNorm of the stage output.
    """

    downsample: Optional[ConvDownsample]
    blocks: nn.ModuleList
    norm: nn.LayerNorm


@MODELS.register_module()
class SGFormer(PretrainedInitMixin, BaseModule):
    """SG-Former backbone: "SG-Former: Self-guided Transformer with Evolving Token Reallocation".

    Four stages (strides 4/8/16/32). Stages 1-3 alternate hybrid-scale attention (even block
    index; it produces a significance map) and self-guided attention (odd index; it reallocates
    tokens by ranking them with that map); stage 4 uses standard global attention. Parameter
    names are the official ones (``pos_embed``, ``patch_embed{i}``, ``block{i}.{j}``,
    ``norm{i}``), so an official checkpoint without ``head.*`` loads with ``strict=True``.

    Args:
        arch: ``'s'/'small'``, ``'m'/'medium'``, ``'b'/'base'`` or a dict with exactly the keys
            ``embed_dims``, ``num_heads`` and ``depths`` (four entries each). Depths and head
            counts of stages 1-3 must be even.
        sr_ratios: spatial-reduction ratio of each stage; stages 1-3 take 8, 4 or 2 (they select
            the self-guided segment rule), stage 4 must be 1. Default ``(8, 4, 2, 1)``.
        mlp_ratio: FFN hidden size / embed dim. Default 4.
        qkv_bias: bias of the q/kv projections. Default True.
        drop_path_rate: stochastic depth rate, linear over all blocks. Default 0.
        pretrain_img_size: image size (int, or an ``(H, W)`` pair) the position table is built
            for; the table grid is ``size // 4``. Default 224 (a 56x56 table).
        out_indices: stages (0-3) whose normalized outputs are returned, in stage order.
            Default (0, 1, 2, 3).
        frozen_stages: -1 freezes nothing; 0 the stem and ``pos_embed``; ``k`` also stages
            ``0..k-1`` (downsampling, blocks and norm). Kept frozen by ``train()``.
        with_cp: gradient checkpointing of every block (when the input requires grad).
        fast_path: compute with the fast paths of :mod:`mmsgformer.models.fast_paths`
            (default True: flash-style hybrid-scale attention and recomputed FFN/conv
            activations in training, fused projections and chunking in inference); ``False``
            runs the plain computation everywhere (the reference the fast paths are tested
            against).
        sga_impl: ``'auto'``, ``'op'`` or ``'reference'``: implementation of
            :func:`mmsgformer.ops.sg_aggregate` used by the self-guided blocks.
        init_cfg: ``None`` (official init, design §10) or
            ``dict(type='Pretrained', checkpoint=PATH[, prefix=...])``: an official training
            checkpoint (``state_dict_ema`` preferred), a converted one or a runner checkpoint.

    Input / output:
        ``forward(x)`` takes ``(B, 3, H, W)`` with ``H, W >= 32`` and returns a tuple with one
        ``(B, C_i, H_i, W_i)`` map per entry of ``out_indices``, taken after the stage norm.
        ``forward(x, return_significance=True)`` returns ``(outs, records)``, one
        :class:`SignificanceRecord` ``(stage, block, sr_ratio, significance (B, H_i, W_i))`` per
        hybrid-scale block, in order.

    Generalization beyond the official input sizes (the official code only runs at
    ``112a x 112b`` pixels with ``a*b % 4 == 0`` and a matching square position table; at those
    sizes this class computes exactly the official function, with no padding or masking):

    * Token grids: stem ``ceil(ceil(H/2)/2)``, each downsampling ``ceil(H/2)`` (conv arithmetic).
    * ``pos_embed``: when the stem grid differs from the table grid, the table is resized to the
      stem grid by bicubic interpolation (``align_corners=False``) of its 2-D grid; otherwise it
      is added as is. Loading a checkpoint whose table has another size resizes it to this
      model's table the same way.
    * 7x7 windows of hybrid-scale attention: a grid not divisible by 7 is padded bottom/right to
      a multiple of 7; padded keys are masked (they get no attention) and padded queries are
      discarded. The local significance of a window is the mean over its real queries only, so
      the significance of real tokens does not depend on the padding.
    * Coarse branch: the ``sr`` conv floors ``H/r`` (it runs on the unpadded grid) and its
      significance is upsampled back with nearest interpolation, as in the official code.
    * Self-guided segments: ``mmsgformer.ops.segment_layout(N, r)``: segment boundaries at
      ``floor(N*q/4)``; a segment of ``L`` ranks gives ``ceil(L/g_k)`` groups, the last one
      possibly short (missing slots contribute nothing). This is the official rule at official
      sizes.
    * The significance map never crosses a stage boundary: depths of stages 1-3 must be even,
      so every hybrid-scale block is followed by its self-guided block (design Q5).
    """

    arch_zoo: Dict[str, Dict[str, List[int]]] = {
        **dict.fromkeys(['s', 'small'], {
            'embed_dims': [64, 128, 256, 512],
            'num_heads': [2, 4, 8, 16],
            'depths': [2, 4, 16, 1]
        }),
        **dict.fromkeys(['m', 'medium'], {
            'embed_dims': [64, 128, 256, 512],
            'num_heads': [2, 4, 8, 16],
            'depths': [2, 6, 28, 2]
        }),
        **dict.fromkeys(['b', 'base'], {
            'embed_dims': [96, 192, 384, 768],
            'num_heads': [4, 6, 12, 24],
            'depths': [4, 6, 24, 2]
        }),
    }
    num_stages = 4

    def __init__(self,
                 arch: Union[str, Dict[str, Sequence[int]]] = 's',
                 sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_path_rate: float = 0.,
                 pretrain_img_size: Union[int, Sequence[int]] = 224,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 sga_impl: str = 'auto',
                 fast_path: bool = True,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.embed_dims: List[int] = arch['embed_dims']
        self.num_heads: List[int] = arch['num_heads']
        self.depths: List[int] = arch['depths']
        self.sr_ratios = self._check_sr_ratios(sr_ratios)
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f'mlp_ratio={mlp_ratio!r} must be a positive number')
        check_drop_path_rate(drop_path_rate)
        if sga_impl not in IMPLS:
            raise ValueError(f'sga_impl={sga_impl!r} must be one of {IMPLS}')
        self.out_indices = check_out_indices(out_indices, self.num_stages)
        check_frozen_stages(frozen_stages, self.num_stages)
        self.frozen_stages = frozen_stages
        self.with_cp = bool(with_cp)
        self.sga_impl = sga_impl
        self.mlp_ratio = mlp_ratio
        self.pretrain_img_size = _as_pair(pretrain_img_size, 'pretrain_img_size')
        self.pos_grid = (self.pretrain_img_size[0] // 4, self.pretrain_img_size[1] // 4)

        # Official names and registration order (design §15): pos_embed, then per stage
        # patch_embed{i+1} (the stem for stage 0), block{i+1}, norm{i+1}. `stage(i)` lists them.
        self.pos_embed = nn.Parameter(sincos_pos_embed(self.embed_dims[0], *self.pos_grid))
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        for i in range(self.num_stages):
            dim = self.embed_dims[i]
            if i == 0:
                self.patch_embed1 = ConvStem(dim)
            else:
                setattr(self, f'patch_embed{i + 1}', ConvDownsample(self.embed_dims[i - 1], dim))
            first = sum(self.depths[:i])
            setattr(self, f'block{i + 1}',
                    self._make_blocks(i, qkv_bias, dpr[first:first + self.depths[i]]))
            setattr(self, f'norm{i + 1}', nn.LayerNorm(dim, eps=1e-6))
        self.set_fast_path(fast_path)

        self._register_load_state_dict_pre_hook(self._pos_embed_load_hook)
        self._freeze_stages()

    def _make_blocks(self, i: int, qkv_bias: bool, drop_path: Sequence[float]) -> nn.ModuleList:
        """Blocks of stage ``i``: hybrid-scale (even index) and self-guided (odd index) blocks
        alternating in stages 0-2; standard global attention in stage 3 (``sr_ratio == 1``)."""
        dim, heads, r = self.embed_dims[i], self.num_heads[i], self.sr_ratios[i]
        blocks = nn.ModuleList()
        for j, dp in enumerate(drop_path):
            if r == 1:
                attn = StandardAttention(dim, heads, qkv_bias)
            elif j % 2 == 0:
                attn = HybridScaleAttention(dim, heads, r, qkv_bias)
            else:
                attn = SelfGuidedAttention(dim, heads, r, qkv_bias, self.sga_impl)
            blocks.append(Block(dim, attn, self.mlp_ratio, dp))
        return blocks

    # ------------------------------------------------------------------ the stage ladder
    @property
    def stem(self) -> ConvStem:
        """The stem ``patch_embed1``: image -> stride-4 tokens."""
        return self.patch_embed1

    def stage(self, i: int) -> StageParts:
        """The parts of stage ``i`` (0-based) under their official names ``*{i+1}``."""
        if not 0 <= i < self.num_stages:
            raise ValueError(f'stage index {i} must be in [0, {self.num_stages - 1}]')
        return StageParts(downsample=getattr(self, f'patch_embed{i + 1}') if i else None,
                          blocks=getattr(self, f'block{i + 1}'),
                          norm=getattr(self, f'norm{i + 1}'))

    @property
    def stages(self) -> List[StageParts]:
        """All four stages, in order."""
        return [self.stage(i) for i in range(self.num_stages)]

    def set_fast_path(self, enabled: bool) -> None:
        """Select the fast paths (True) or the plain computation (False) in every module."""
        self.fast_path = bool(enabled)
        for m in self.modules():
            m.fast_path = self.fast_path

    # ------------------------------------------------------------------ validation
    @classmethod
    def _parse_arch(cls, arch: Union[str, Dict[str, Sequence[int]]]) -> Dict[str, List[int]]:
        arch = select_arch(arch, cls.arch_zoo, _ARCH_KEYS, 'SGFormer')
        out = {}
        for k in _ARCH_KEYS:
            v = arch[k]
            if (not isinstance(v, (list, tuple)) or len(v) != cls.num_stages
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                               for x in v)):
                raise ValueError(f'arch[{k!r}]={v!r} must be 4 positive ints')
            out[k] = list(v)
        for i in range(cls.num_stages):
            dim, heads, depth = out['embed_dims'][i], out['num_heads'][i], out['depths'][i]
            if i < 3 and depth % 2:
                raise ValueError(f'depths[{i}]={depth} must be even: stages 1-3 alternate '
                                 f'hybrid-scale and self-guided blocks')
            if i < 3 and heads % 2:
                raise ValueError(f'num_heads[{i}]={heads} must be even: hybrid-scale and '
                                 f'self-guided attention split the heads into two groups')
            if dim % heads:
                raise ValueError(f'embed_dims[{i}]={dim} must be divisible by '
                                 f'num_heads[{i}]={heads}')
        if out['embed_dims'][0] % 4:
            raise ValueError(f"embed_dims[0]={out['embed_dims'][0]} must be divisible by 4 "
                             f'(2-D sin-cos position table)')
        return out

    def _check_sr_ratios(self, sr_ratios: Sequence[int]) -> List[int]:
        if not isinstance(sr_ratios, (list, tuple)) or len(sr_ratios) != self.num_stages:
            raise ValueError(f'sr_ratios={sr_ratios!r} must have 4 entries')
        for r in sr_ratios[:3]:
            group_sizes_for(r)  # raises ValueError naming the ratio and the supported ones
        if sr_ratios[3] != 1:
            raise ValueError(f'sr_ratios[3]={sr_ratios[3]} must be 1: stage 4 uses standard '
                             f'global attention')
        return list(sr_ratios)

    # ------------------------------------------------------------------ position table
    def _stage_pos_embed(self, H: int, W: int) -> torch.Tensor:
        """Position table for a stem grid ``(H, W)``: ``(1, H*W, C1)``."""
        if not is_symbolic(H, W) and (H, W) == self.pos_grid:
            return self.pos_embed
        return fast_paths.inference_cache(  # inference: resized once per grid
            self, 'pos_embed', (H, W), [self.pos_embed],
            lambda: resize_pos_embed(self.pos_embed, self.pos_grid, (H, W)))

    def _table_grid_of(self, num_tokens: int) -> Tuple[int, int]:
        """Grid of a checkpoint table with ``num_tokens`` entries: the model's aspect ratio."""
        gh, gw = self.pos_grid
        h = math.isqrt(max(num_tokens * gh // gw, 0))
        for cand in (h - 1, h, h + 1):
            if cand > 0 and num_tokens % cand == 0:
                w = num_tokens // cand
                if cand * gw == w * gh:
                    return cand, w
        s = math.isqrt(num_tokens)
        if s * s == num_tokens:
            return s, s
        raise ValueError(f'cannot infer the grid of a pos_embed with {num_tokens} tokens: it is '
                         f'neither square nor of the model table aspect {gh}x{gw}')

    def _pos_embed_load_hook(self, state_dict: dict, prefix: str, *args) -> None:
        key = prefix + 'pos_embed'
        if key not in state_dict:
            return
        value = state_dict[key]
        if (value.ndim != 3 or value.shape == self.pos_embed.shape
                or value.shape[-1] != self.pos_embed.shape[-1]):
            return  # same shape, or an incompatible one that load_state_dict will report
        src = self._table_grid_of(value.shape[1])
        state_dict[key] = resize_pos_embed(value.float(), src, self.pos_grid).to(value.dtype)
        print_log(f'SGFormer: resized pos_embed {src[0]}x{src[1]} -> '
                  f'{self.pos_grid[0]}x{self.pos_grid[1]} (bicubic)', logger='current')

    # ------------------------------------------------------------------ init / loading
    @torch.no_grad()
    def _official_init(self) -> None:
        """Official initialization (design §10)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02, a=-2., b=2.)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.pos_embed.copy_(sincos_pos_embed(self.embed_dims[0], *self.pos_grid))

    def _adapt_checkpoint(self, state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor],
                          checkpoint: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, list]]:
        """Resize a checkpoint ``pos_embed`` of another grid (bicubic); its channels must fit."""
        if 'pos_embed' in state and state['pos_embed'].shape[-1] != own['pos_embed'].shape[-1]:
            raise ValueError(f"checkpoint {checkpoint!r}: pos_embed has shape "
                             f"{tuple(state['pos_embed'].shape)} but the model expects "
                             f"{tuple(own['pos_embed'].shape)} (channel count differs)")
        self._pos_embed_load_hook(state, '')
        return state, {}

    # ------------------------------------------------------------------ freezing
    def _freeze_stages(self) -> None:
        frozen: List[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
            self.pos_embed.requires_grad = False
        for stage in self.stages[:max(self.frozen_stages, 0)]:
            frozen += [m for m in (stage.downsample, stage.blocks, stage.norm) if m is not None]
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'SGFormer':
        super().train(mode)
        self._freeze_stages()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, return_significance: bool = False
                ) -> Union[Tuple[torch.Tensor, ...],
                           Tuple[Tuple[torch.Tensor, ...], List[SignificanceRecord]]]:
        """``(B, 3, H, W)`` -> tuple of ``(B, C_i, H_i, W_i)`` (one per ``out_indices``).

        With ``return_significance=True`` also returns the list of
        :class:`SignificanceRecord` of the hybrid-scale blocks.
        """
        check_image_batch(x, 3, 32, 'SGFormer')
        outs, records = [], []
        x, H, W = self.stem(x)
        x = x + self._stage_pos_embed(H, W)
        for i, stage in enumerate(self.stages):
            if stage.downsample is not None:
                x, H, W = stage.downsample(x)
            x = self._run_blocks(i, stage.blocks, x, H, W,
                                 records if return_significance else None)
            x = tokens_to_map(stage.norm(x), H, W)  # (B, C_i, H_i, W_i), channels-last view
            if i in self.out_indices:
                outs.append(x.contiguous())
        if return_significance:
            return tuple(outs), records
        return tuple(outs)

    def _run_blocks(self, i: int, blocks: nn.ModuleList, x: torch.Tensor, H: int, W: int,
                    records: Optional[List[SignificanceRecord]]) -> torch.Tensor:
        """The blocks of stage ``i`` on ``x (B, H*W, C_i)``; each hybrid-scale block's map goes
        to the self-guided block after it (and into ``records`` when given)."""
        sig = None
        for j, blk in enumerate(blocks):
            if self.with_cp and x.requires_grad:
                x, sig = cp.checkpoint(blk, x, H, W, sig, use_reentrant=False)
            else:
                x, sig = blk(x, H, W, sig)
            if sig is not None and records is not None:
                records.append(SignificanceRecord(i, j, self.sr_ratios[i], sig))
        return x
