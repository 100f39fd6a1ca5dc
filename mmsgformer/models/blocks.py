"""Building blocks of SG-Former: conv+GroupNorm unit, stem, downsampling, FFN and the block.

Module and parameter names follow the official code (design §2, §4, §15) so official
checkpoints load with ``strict=True``. The modules spell out the plain computation; the faster
ways to compute the same thing live in :mod:`mmsgformer.models.fast_paths`.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from . import fast_paths
from .common import DropPath, add_fresh, map_to_tokens, tokens_to_map


class ConvGN(nn.Module):
    """Conv2d without bias followed by ``GroupNorm(1, C)``.

    The official class is called ``Conv2d_BN`` and stores the GroupNorm under ``bn`` (design Q3);
    the sub-module names ``c`` and ``bn`` are kept for checkpoint compatibility.
    ``(B, C_in, H, W) -> (B, C_out, H', W')``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                           groups=groups, bias=False)
        self.bn = nn.GroupNorm(1, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


def conv_gn_chain(units: Sequence[ConvGN], x: torch.Tensor) -> torch.Tensor:
    """``units[-1](GELU(... GELU(units[0](x))))``: conv+GroupNorm units with GELU between them.

    Plain path: module by module. Fast path (training): each ``GroupNorm -> GELU -> next conv``
    is one :func:`~mmsgformer.models.fast_paths.norm_act_conv`, which stores only the conv
    output before it; inference: GELUs in place, and on channels-last maps the GroupNorm too
    (:func:`~mmsgformer.models.fast_paths.norm_act_inplace`).
    """
    x = units[0].c(x)
    for prev, unit in zip(units, units[1:]):
        fast = fast_paths.norm_act_conv(prev.bn, unit.c, x)  # training
        if fast is not None:
            x = fast
            continue
        a = fast_paths.norm_act_inplace(prev.bn, x, act=True)  # inference, channels-last
        if a is None and not torch.is_grad_enabled() and fast_paths.use_fast_path(unit):
            a = torch.ops.aten.gelu_(prev.bn(x))  # same values, one buffer less
        elif a is None:
            a = nn.functional.gelu(prev.bn(x))
        x = unit.c(a)
    out = fast_paths.norm_act_inplace(units[-1].bn, x, act=False)
    return units[-1].bn(x) if out is None else out


class ConvStem(nn.Module):
    """The stem ``patch_embed1`` (official class ``Head``), output stride 4.

    Three 3x3 convs (strides 2, 1, 2) with GroupNorm, GELU between them, then a LayerNorm
    (eps 1e-5, design Q2) on the flattened tokens.
    ``(B, 3, Hi, Wi) -> ((B, H*W, C), H, W)`` with ``H = ceil(ceil(Hi / 2) / 2)``.
    """

    def __init__(self, embed_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            ConvGN(in_channels, embed_dim, 3, 2, 1),
            nn.GELU(),
            ConvGN(embed_dim, embed_dim, 3, 1, 1),
            nn.GELU(),
            ConvGN(embed_dim, embed_dim, 3, 2, 1),
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        # Official sizes (inference): dense convs in the official contiguous NCHW layout, whose
        # float32 rounding keeps the first significance sort the official one. Training and
        # other sizes: channels-last (faster; in training on CPUs without AVX-512 NCHW is), see
        # fast_paths.conv_memory_format.
        units = [self.conv[0], self.conv[2], self.conv[4]]
        layout = fast_paths.conv_memory_format(self, x, fast_paths.STEM_OFFICIAL_MULTIPLE,
                                               dense=True)
        x = x.contiguous(memory_format=layout)
        banded = fast_paths.stem_inference(units, x)  # inference, channels-last
        if banded is not None:
            x = banded
        elif (chunks := fast_paths.image_chunks(self, x)) is not None:
            x = torch.cat([conv_gn_chain(units, c) for c in chunks])  # a few images at a time
        else:
            x = conv_gn_chain(units, x)
        _, _, H, W = x.shape
        x = self.norm(map_to_tokens(x))  # a view of channels-last maps, else a copy
        return x, H, W


class ConvDownsample(nn.Module):
    """Downsampling ``patch_embed{2,3,4}`` (official class ``PatchMerging``, but not Swin's):
    1x1 conv, 3x3/2 depthwise conv, 1x1 conv.

    Each conv has a GroupNorm; GELU after the first two. No LayerNorm (design §2.2).
    ``(B, C_in, H, W) -> ((B, H'*W', C_out), H', W')`` with ``H' = ceil(H / 2)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvGN(in_channels, out_channels, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvGN(out_channels, out_channels, 3, 2, 1, groups=out_channels)
        self.act2 = nn.GELU()
        self.conv3 = ConvGN(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        # the layout rule of the stem (fast_paths.conv_memory_format); the backbone hands over
        # the previous stage's tokens as a channels-last view, so that layout costs no copy
        layout = fast_paths.conv_memory_format(self, x, fast_paths.DOWNSAMPLE_OFFICIAL_MULTIPLE)
        x = conv_gn_chain([self.conv1, self.conv2, self.conv3], x.contiguous(memory_format=layout))
        _, _, H, W = x.shape
        return map_to_tokens(x).contiguous(), H, W


class DWConv(nn.Module):
    """Depthwise 3x3 conv on tokens: ``(B, H*W, C) -> (B, H*W, C)`` (``mlp.dwconv.dwconv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, H, W)))


class Mlp(nn.Module):
    """FFN ``fc2(GELU(z + DWConv(z)))`` with ``z = fc1(x)``; the residual sits inside the GELU.

    ``(B, H*W, C) -> (B, H*W, C)``, hidden size ``mlp_ratio * C``.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        fast = fast_paths.ffn_inference(self, x, H, W)  # large maps: all of it in bands of rows
        if fast is not None:
            return fast
        z = self.fc1(x)
        fast = fast_paths.ffn_tail(self, z, H, W)  # stores z only; large maps in bands of rows
        if fast is not None:
            return fast
        # plain path; in place on the conv output (autograd-safe: conv does not need its output)
        u = self.dwconv(z, H, W).add_(z)
        if torch.is_grad_enabled() and u.requires_grad:
            h = self.act(u)
        else:  # inference: no extra (B, N, 4C) buffer
            h = torch.ops.aten.gelu_(u)
        return self.fc2(h)


class Block(nn.Module):
    """Pre-norm transformer block shared by all three attention types (design §4).

    ``x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x)))``; one DropPath for both
    branches. ``attn`` is a hybrid-scale, self-guided or standard attention module.

    ``forward(x (B, N, C), H, W, significance (B, H, W) or None)`` returns
    ``(x (B, N, C), significance or None)``: the hybrid-scale block returns its map, the other
    two return ``None``.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.,
                 drop_path: float = 0.) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int,
                significance: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        a, sig_out = self.attn(self.norm1(x), H, W, significance)
        x = add_fresh(self.drop_path(a), x)
        x = add_fresh(self.drop_path(self.mlp(self.norm2(x), H, W)), x)
        return x, sig_out


__all__ = ['ConvGN', 'conv_gn_chain', 'ConvStem', 'ConvDownsample', 'DWConv', 'Mlp', 'Block',
           'tokens_to_map', 'map_to_tokens']
