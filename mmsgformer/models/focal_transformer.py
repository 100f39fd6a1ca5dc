"""Focal Transformer (v1) backbone (Yang et al., NeurIPS 2021) for mmpretrain, mmdet and mmseg.

Ladder: :class:`~mmsgformer.models.focal_attention.FocalAttention` -> :class:`FocalBlock` ->
:class:`FocalStage` -> :class:`FocalTransformer`. Parameter names are the official ones
(``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``, ``norm.*``).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS

from .focal_attention import (BORDER_MODES, OFFICIAL_INDEX_BUFFERS, POOL_METHODS,
                              FocalAttention, FocalGeometry, focal_geometry)
from .common import (DropPath, check_drop_path_rate, check_frozen_stages, check_image_batch,
                     check_out_indices, select_arch)
from .pretrained import PretrainedInitMixin

_ARCH_KEYS = ('embed_dims', 'depths', 'num_heads')


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2`` on ``(B, L, C)`` tokens."""

    def __init__(self, embed_dims: int, hidden_dims: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FocalPatchEmbed(nn.Module):
    """Strided conv (+ LayerNorm): the stem and the downsampling between stages (official
    ``PatchEmbed``; downsampling is *not* Swin's PatchMerging).

    ``forward`` maps ``(B, C_in, H, W)`` to ``((B, H' * W', C_out), (H', W'))`` with conv
    arithmetic (floor), e.g. a 2x2/2 downsample of a 57-row map gives 28 rows.
    """

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int,
                 padding: int = 0, norm: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(embed_dims) if norm else None

    def out_size(self, size: int) -> int:
        """Output length of one side of ``size`` pixels/tokens."""
        k, s, p = self.proj.kernel_size[0], self.proj.stride[0], self.proj.padding[0]
        return (size + 2 * p - k) // s + 1

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)
        hw_shape = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw_shape


class FocalBlock(nn.Module):
    """Pre-norm block: ``x + DropPath(FocalAttn(LN1(x)))``, then ``x + DropPath(MLP(LN2(x)))``.

    The coarse-level pooling layers live here, as in the official code (``pool_layers.0``).
    ``forward(x, hw_shape, geometry)`` maps ``(B, H*W, C)`` to ``(B, H*W, C)``.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int = 7,
                 expand_size: int = 3, focal_window: int = 7, focal_levels: int = 2,
                 pool_method: str = 'fc', mlp_ratio: float = 4., qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_path: float = 0.,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.window_size = window_size
        self.pool_method = pool_method
        self.pooled = focal_levels > 1 and pool_method != 'none'
        self.with_cp = with_cp
        self.pool_layers = nn.ModuleList()
        if self.pooled and pool_method == 'fc':
            fc = nn.Linear(window_size * window_size, 1)
            nn.init.constant_(fc.weight, 1. / (window_size * window_size))
            nn.init.zeros_(fc.bias)
            self.pool_layers.append(fc)
        elif self.pooled and pool_method == 'conv':
            self.pool_layers.append(nn.Conv2d(embed_dims, embed_dims, window_size, window_size,
                                              groups=embed_dims))
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = FocalAttention(embed_dims, num_heads, window_size, expand_size,
                                   focal_window, self.pooled, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool each ``ws x ws`` window of a padded map ``(B, Hp, Wp, C)`` to
        ``(B, Hp/ws, Wp/ws, C)`` (fc: per-channel ``Linear(ws^2, 1)`` over row-major positions)."""
        B, Hp, Wp, C = x.shape
        ws = self.window_size
        if self.pool_method == 'conv':
            return self.pool_layers[0](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        windows = x.view(B, Hp // ws, ws, Wp // ws, ws, C)
        if self.pool_method == 'mean':
            return windows.mean(dim=(2, 4))
        if self.pool_method == 'max':
            return windows.amax(dim=(2, 4))
        fc = self.pool_layers[0]
        pooled = torch.einsum('bhiwjc,ij->bhwc', windows, fc.weight.view(ws, ws))
        return pooled + fc.bias

    def _attention(self, x: torch.Tensor, hw_shape: Tuple[int, int],
                   geometry: FocalGeometry) -> torch.Tensor:
        B, L, C = x.shape
        H, W = hw_shape
        Hp, Wp = geometry.padded_shape
        x = x.view(B, H, W, C)
        if Hp > H or Wp > W:
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        pooled = self.pool(x) if self.pooled else None
        x = self.attn(x, pooled, geometry)
        return x[:, :H, :W].reshape(B, L, C)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int],
                geometry: FocalGeometry) -> torch.Tensor:
        """``(B, H*W, C)`` -> ``(B, H*W, C)``; ``geometry`` from :func:`focal_geometry`."""

        def _inner_forward(x: torch.Tensor) -> torch.Tensor:
            x = x + self.drop_path(self._attention(self.norm1(x), hw_shape, geometry))
            return x + self.drop_path(self.mlp(self.norm2(x)))

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(_inner_forward, x, use_reentrant=False)
        return _inner_forward(x)


class FocalStage(nn.Module):
    """``depth`` blocks at one resolution, then the optional downsample (official
    ``BasicLayer``). The key geometry is computed once per forward and shared by the blocks."""

    def __init__(self, embed_dims: int, depth: int, num_heads: int, window_size: int,
                 expand_size: int, focal_window: int, focal_levels: int, pool_method: str,
                 border_mode: str, mlp_ratio: float, qkv_bias: bool, qk_scale: Optional[float],
                 drop_paths: Sequence[float], downsample: Optional[nn.Module],
                 with_cp: bool) -> None:
        super().__init__()
        self.window_size = window_size
        self.expand_size = expand_size
        self.focal_window = focal_window
        self.border_mode = border_mode
        self.blocks = nn.ModuleList([
            FocalBlock(embed_dims, num_heads, window_size, expand_size, focal_window,
                       focal_levels, pool_method, mlp_ratio, qkv_bias, qk_scale,
                       drop_paths[j], with_cp) for j in range(depth)
        ])
        self.pooled = self.blocks[0].pooled
        self.downsample = downsample

    def geometry(self, hw_shape: Tuple[int, int], device: torch.device) -> FocalGeometry:
        """Key geometry of this stage for a map of ``hw_shape`` (minimal padding)."""
        return focal_geometry(hw_shape, self.window_size, self.expand_size, self.focal_window,
                              self.pooled, self.border_mode, device=device)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int], downsample: bool = True
                ) -> Tuple[torch.Tensor, Tuple[int, int], Optional[torch.Tensor],
                           Optional[Tuple[int, int]]]:
        """``(B, H*W, C)`` -> ``(out (B, H*W, C), hw, down (B, H'*W', 2C) or None, hw')``."""
        geometry = self.geometry(hw_shape, x.device)
        for block in self.blocks:
            x = block(x, hw_shape, geometry)
        if self.downsample is None or not downsample:
            return x, hw_shape, None, None
        B, _, C = x.shape
        down, down_hw = self.downsample(x.transpose(1, 2).reshape(B, C, *hw_shape))
        return x, hw_shape, down, down_hw


@MODELS.register_module()
class FocalTransformer(PretrainedInitMixin, BaseModule):
    """Focal Transformer v1 backbone: "Focal Self-attention for Local-Global Interactions in
    Vision Transformers" (Yang et al., 2021), official code microsoft/Focal-Transformer.

    Stem conv 4x4/4 (+LN), four stages of focal blocks (each query window attends to its own
    tokens, its fine surroundings and pooled windows around it), a conv 2x2/2 + LN downsample
    after stages 0-2. Parameter names are the official ones, so an official checkpoint loads
    (its index buffers are recomputed and dropped on load, ``head.*`` is set aside).

    Args:
        arch: ``'t'/'tiny'``, ``'s'/'small'``, ``'b'/'base'`` or a dict with exactly the keys
            ``embed_dims`` (int, channels of stage 0; stage i has ``embed_dims * 2**i``),
            ``depths`` and ``num_heads`` (one entry per stage).
        in_channels: image channels. Default 3.
        patch_size: stem stride (and kernel unless ``use_conv_embed``). Default 4.
        window_size: query window ``ws``, the same in every stage. Default 7.
        expand_size: fine surroundings ``es`` around each window (0 disables). Default 3.
        focal_levels: 2 (window + surroundings + one pooled level, all released models) or 1
            (no pooled level). Default 2.
        focal_windows: pooled keys per side ``fw`` of each stage (odd). Default (7, 5, 3, 1).
        pool_method: ``'fc'`` (official), ``'mean'``, ``'max'``, ``'conv'`` or ``'none'``.
        mlp_ratio: MLP hidden / embed dims. Default 4.
        qkv_bias: bias of the qkv Linear. Default True.
        qk_scale: logit scale, default ``head_dim ** -0.5``.
        patch_norm: LayerNorm after the stem conv (downsamples always have one). Default True.
        use_conv_embed: overlapping convs (stem 7x7/4 pad 2, downsample 3x3/2 pad 1). Default
            False.
        border_mode: ``'official'`` (default) reproduces the official model exactly: maps are
            zero-padded to multiples of ``ws`` and padded tokens are not masked, the fine
            surroundings wrap cyclically around the padded map, out-of-grid pooled keys get
            -100. Use it to reproduce official classification logits (an ImageClassifier built
            from a converted official checkpoint with default arguments). ``'masked'`` masks
            padded tokens, surroundings beyond the map and empty pooled windows, so padding
            changes nothing for real tokens and borders do not see the opposite side: the
            detection / segmentation configs set it.
        drop_path_rate: stochastic depth, linear from 0 over all blocks. Default 0.
        out_indices: stages whose outputs are returned. Default (0, 1, 2, 3).
        frozen_stages: freeze the stem (0) and stages ``0..frozen_stages-1`` with their
            downsample and output norm; -1 freezes nothing. Kept frozen by ``train()``.
        with_cp: gradient checkpointing of every block when the input requires grad.
        init_cfg: None (official init) or ``dict(type='Pretrained', checkpoint=PATH[,
            prefix=...])`` for an official, converted or runner checkpoint.

    Input / output:
        ``forward(x)``: ``x`` is ``(B, in_channels, H, W)``, any ``H, W >= 32`` (for the default
        stem). Returns a tuple with one ``(B, C_i, H_i, W_i)`` map per ``out_indices`` entry:
        the stage output before its downsample, normed by ``norm{i}`` (``norm``, the official
        final norm, for the last stage). ``H_0 = floor(H / 4)``, ``H_{i+1} = floor(H_i / 2)``.

    Resolution independence (the official model fixes its input size at construction and its
    parameter shapes depend on it): the neighbour bias tables are built in every stage and used
    only where the stage map is larger than the window (``min(H_i, W_i) > ws``); that equals
    the official model at 224 (stage 3 is 7x7: no surroundings) and at 256. Windows are always
    ``ws``: maps smaller than ``ws`` are padded, whereas the official code shrinks the window to
    the map there (and changes its table shapes), so results differ from the official model
    only for maps with a side < ``ws``. An official 224 checkpoint has no stage-3 neighbour
    tables: they are reported missing and keep their init (trunc-normal, std 0.02); they are
    unused at 224.

    No weight decay on the bias tables in the official recipe:
    ``paramwise_cfg=dict(custom_keys={'relative_position_bias_table': dict(decay_mult=0.)})``.
    """

    #: official state-dict buffers that are recomputed here (dropped when loading)
    recomputed_buffers = OFFICIAL_INDEX_BUFFERS

    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], {'embed_dims': 96, 'depths': [2, 2, 6, 2],
                                        'num_heads': [3, 6, 12, 24]}),
        **dict.fromkeys(['s', 'small'], {'embed_dims': 96, 'depths': [2, 2, 18, 2],
                                         'num_heads': [3, 6, 12, 24]}),
        **dict.fromkeys(['b', 'base'], {'embed_dims': 128, 'depths': [2, 2, 18, 2],
                                        'num_heads': [4, 8, 16, 32]}),
    }

    def __init__(self,
                 arch: Union[str, Dict] = 'tiny',
                 in_channels: int = 3,
                 patch_size: int = 4,
                 window_size: int = 7,
                 expand_size: int = 3,
                 focal_levels: int = 2,
                 focal_windows: Sequence[int] = (7, 5, 3, 1),
                 pool_method: str = 'fc',
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 patch_norm: bool = True,
                 use_conv_embed: bool = False,
                 border_mode: str = 'official',
                 drop_path_rate: float = 0.,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.embed_dims = arch['embed_dims']
        self.depths = list(arch['depths'])
        self.num_heads = list(arch['num_heads'])
        self.num_stages = len(self.depths)
        self.num_features = [self.embed_dims * 2**i for i in range(self.num_stages)]
        self._check_args(in_channels, patch_size, window_size, expand_size, focal_levels,
                         focal_windows, pool_method, border_mode, drop_path_rate, frozen_stages)
        self.in_channels = in_channels
        self.window_size = window_size
        self.border_mode = border_mode
        self.focal_windows = tuple(focal_windows)
        self.out_indices = check_out_indices(out_indices, self.num_stages)
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp

        if use_conv_embed:
            self.patch_embed = FocalPatchEmbed(in_channels, self.embed_dims, 7, 4, 2, patch_norm)
        else:
            self.patch_embed = FocalPatchEmbed(in_channels, self.embed_dims, patch_size,
                                               patch_size, 0, patch_norm)
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads, dims) in enumerate(zip(self.depths, self.num_heads,
                                                     self.num_features)):
            downsample = None
            if i < self.num_stages - 1:
                k, s, p = (3, 2, 1) if use_conv_embed else (2, 2, 0)
                downsample = FocalPatchEmbed(dims, 2 * dims, k, s, p, norm=True)
            start = sum(self.depths[:i])
            self.layers.append(FocalStage(
                dims, depth, heads, window_size, expand_size, self.focal_windows[i],
                focal_levels, pool_method, border_mode, mlp_ratio, qkv_bias, qk_scale,
                dpr[start:start + depth], downsample, with_cp))
        # output norms: the official final `norm` for the last stage, norm{i} for the others
        for i in self.out_indices:
            if i < self.num_stages - 1:
                self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        if self.num_stages - 1 in self.out_indices:
            self.norm = nn.LayerNorm(self.num_features[-1])
        self.min_input_size = self._min_input_size()

    # ------------------------------------------------------------------ validation
    @classmethod
    def _parse_arch(cls, arch: Union[str, Dict]) -> Dict:
        arch = select_arch(arch, cls.arch_zoo, _ARCH_KEYS, 'FocalTransformer')
        dims, depths, heads = arch['embed_dims'], arch['depths'], arch['num_heads']
        if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
            raise ValueError(f"arch['embed_dims']={dims!r} must be a positive int")
        for name, seq in (('depths', depths), ('num_heads', heads)):
            if (not isinstance(seq, (list, tuple)) or not seq or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in seq)):
                raise ValueError(f"arch['{name}']={seq!r} must be a non-empty list of "
                                 f'positive ints')
        if len(depths) != len(heads):
            raise ValueError(f"arch['depths']={list(depths)} and arch['num_heads']="
                             f'{list(heads)} must have the same length (one per stage)')
        for i, h in enumerate(heads):
            if (dims * 2**i) % h:
                raise ValueError(f'stage {i} has {dims * 2**i} channels (embed_dims * 2**{i}), '
                                 f"not divisible by arch['num_heads'][{i}]={h}")
        return dict(embed_dims=dims, depths=list(depths), num_heads=list(heads))

    def _check_args(self, in_channels, patch_size, window_size, expand_size, focal_levels,
                    focal_windows, pool_method, border_mode, drop_path_rate,
                    frozen_stages) -> None:
        for name, value, low in (('in_channels', in_channels, 1), ('patch_size', patch_size, 1),
                                 ('window_size', window_size, 1), ('expand_size', expand_size, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f'{name}={value!r} must be an int >= {low}')
        if expand_size >= window_size:
            raise ValueError(f'expand_size={expand_size} must be < window_size={window_size}')
        if focal_levels not in (1, 2):
            raise ValueError(f'focal_levels={focal_levels!r} must be 1 or 2 (every released '
                             f'Focal v1 model uses 2: window + one pooled level)')
        if (not isinstance(focal_windows, (list, tuple))
                or len(focal_windows) != self.num_stages
                or not all(isinstance(f, int) and f > 0 and f % 2 == 1 for f in focal_windows)):
            raise ValueError(f'focal_windows={focal_windows!r} must hold {self.num_stages} '
                             f'positive odd ints (one per stage)')
        if pool_method not in POOL_METHODS:
            raise ValueError(f'pool_method={pool_method!r} must be one of {POOL_METHODS}')
        if border_mode not in BORDER_MODES:
            raise ValueError(f'border_mode={border_mode!r} must be one of {BORDER_MODES}')
        check_drop_path_rate(drop_path_rate)
        check_frozen_stages(frozen_stages, self.num_stages)

    def stage_sizes(self, height: int, width: int) -> List[Tuple[int, int]]:
        """Token map ``(H_i, W_i)`` of every stage for an ``height x width`` input."""
        sizes = [(self.patch_embed.out_size(height), self.patch_embed.out_size(width))]
        for layer in self.layers[:-1]:
            h, w = sizes[-1]
            sizes.append((layer.downsample.out_size(h), layer.downsample.out_size(w)))
        return sizes

    def _min_input_size(self) -> int:
        last = max(self.out_indices)
        size = 1
        while min(min(hw) for hw in self.stage_sizes(size, size)[:last + 1]) < 1:
            size += 1
        return size

    # ------------------------------------------------------------------ init / loading
    @torch.no_grad()
    def _official_init(self) -> None:
        """Official init: Linear trunc-normal(0.02)/0 (this overwrites the fc-pool mean init, as
        in the official code), LayerNorm 1/0, convs PyTorch default, in-window bias table 0,
        neighbour and pooled-window tables trunc-normal(0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, FocalAttention):
                m.init_tables()

    def _adapt_checkpoint(self, state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor],
                          checkpoint: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
        """Drop the official index buffers (recomputed here); reported as ``recomputed``."""
        recomputed = [k for k in state if k.rsplit('.', 1)[-1] in OFFICIAL_INDEX_BUFFERS]
        for k in recomputed:
            del state[k]
        return state, {'recomputed': recomputed}

    # ------------------------------------------------------------------ freezing
    def _out_norm(self, i: int) -> nn.Module:
        return self.norm if i == self.num_stages - 1 else getattr(self, f'norm{i}')

    def _freeze_stages(self) -> None:
        modules = []
        if self.frozen_stages >= 0:
            modules.append(self.patch_embed)
        for i in range(self.frozen_stages):
            modules.append(self.layers[i])
            if i in self.out_indices:
                modules.append(self._out_norm(i))
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'FocalTransformer':
        super().train(mode)
        self._freeze_stages()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> tuple of ``(B, C_i, H_i, W_i)``, one per out index."""
        check_image_batch(x, self.in_channels, 1, 'FocalTransformer')
        if min(x.shape[2:]) < self.min_input_size:
            raise ValueError(f'input size {x.shape[2]}x{x.shape[3]} is too small: every stage '
                             f'up to {max(self.out_indices)} needs a non-empty map, i.e. H, W '
                             f'>= {self.min_input_size}')
        x, hw_shape = self.patch_embed(x)
        outs = []
        last = max(self.out_indices)
        for i, layer in enumerate(self.layers[:last + 1]):
            out, out_hw, x, hw_shape = layer(x, hw_shape, downsample=i < last)
            if i in self.out_indices:
                out = self._out_norm(i)(out)
                B, _, C = out.shape
                outs.append(out.transpose(1, 2).reshape(B, C, *out_hw).contiguous())
        return tuple(outs)
