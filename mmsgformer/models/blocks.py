"""Building blocks of SG-Former: conv+GroupNorm unit, stem, downsampling, FFN and the block.

Module and parameter names follow the official code (spec §2, §4, §15) so official checkpoints
load with ``strict=True``.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn


# Inference on a batch runs the stem and the large FFNs (stage 1 at 224) a few images at a time:
# the per-chunk intermediates stay in cache and the allocator reuses them instead of faulting in
# fresh pages for every (B, ...) temporary. Convs, GroupNorm and GEMM rows are independent per
# image; with the installed oneDNN/MKL the chunked results are bitwise those of the batched call.
_IMAGES_PER_CHUNK = 4  # 1 or 2 save little more CPU time but add many small ops
_MLP_SPLIT_ELEMS = 1 << 19  # hidden activations per image from which the FFN is split


def _image_chunks(x: torch.Tensor) -> Optional[List[torch.Tensor]]:
    """``x (B, ...)`` as chunks of ``_IMAGES_PER_CHUNK`` images when autograd is disabled and
    ``B`` exceeds the chunk size; ``None`` otherwise (run the batch as a whole)."""
    if x.shape[0] <= _IMAGES_PER_CHUNK or torch.is_grad_enabled():
        return None
    return list(x.split(_IMAGES_PER_CHUNK))


class DropPath(nn.Module):
    """Stochastic depth per sample: zero a residual branch with probability ``drop_prob``.

    Surviving samples are scaled by ``1 / (1 - drop_prob)``. Identity in eval mode or when
    ``drop_prob == 0``. Input of any shape ``(B, ...)``.
    """

    def __init__(self, drop_prob: float = 0.) -> None:
        super().__init__()
        if not 0. <= drop_prob < 1.:
            raise ValueError(f'drop_prob={drop_prob} must be in [0, 1)')
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1. - self.drop_prob
        shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class ConvGN(nn.Module):
    """Conv2d without bias followed by ``GroupNorm(1, C)``.

    The official class is called ``Conv2d_BN`` and stores the GroupNorm under ``bn`` (spec Q3);
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


class Head(nn.Module):
    """Stem ``patch_embed1`` (official class ``Head``), output stride 4.

    Three 3x3 convs (strides 2, 1, 2) with GroupNorm, GELU between them, then a LayerNorm
    (eps 1e-5, spec Q2) on the flattened tokens.
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
        # Dense convs in the official (contiguous NCHW) layout: channels-last picks other conv
        # algorithms whose float32 rounding flips near-ties of the later significance sort.
        x = x.contiguous()
        chunks = _image_chunks(x)
        if chunks is not None:
            x = torch.cat([self._convs_inference(c) for c in chunks])
        else:
            x = self.conv(x)
        _, _, H, W = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, H, W

    def _convs_inference(self, x: torch.Tensor) -> torch.Tensor:
        """``self.conv(x)`` without autograd, GELUs in place (the same values, fewer buffers)."""
        for m in self.conv:
            x = torch.ops.aten.gelu_(x) if isinstance(m, nn.GELU) else m(x)
        return x


class PatchMerging(nn.Module):
    """Downsampling ``patch_embed{2,3,4}``: 1x1 conv, 3x3/2 depthwise conv, 1x1 conv.

    Each conv has a GroupNorm; GELU after the first two. No LayerNorm (spec §2.2).
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
        # official layout (contiguous NCHW), see Head.forward
        x = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x.contiguous())))))
        _, _, H, W = x.shape
        return x.flatten(2).transpose(1, 2).contiguous(), H, W


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
        chunks = None
        if x.shape[1] * self.fc1.out_features >= _MLP_SPLIT_ELEMS:
            chunks = _image_chunks(x)
        if chunks is not None:
            return torch.cat([self._forward(c, H, W) for c in chunks])
        return self._forward(x, H, W)

    def _forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        z = self.fc1(x)
        # in place on the conv output (autograd-safe: conv does not need its output)
        z = self.dwconv(z, H, W).add_(z)
        if torch.is_grad_enabled() and z.requires_grad:
            z = self.act(z)
        else:  # inference: no extra (B, N, 4C) buffer
            z = torch.ops.aten.gelu_(z)
        return self.fc2(z)


class Block(nn.Module):
    """Pre-norm transformer block shared by all three attention types (spec §4).

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
        # the branch outputs are fresh tensors: add the residual in place (autograd-safe)
        x = self.drop_path(a).add_(x)
        x = self.drop_path(self.mlp(self.norm2(x), H, W)).add_(x)
        return x, sig_out


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``: a channels-last view of contiguous tokens (no copy)."""
    B, N, C = x.shape
    return x.contiguous().view(B, H, W, C).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``: a view when ``x`` is channels-last, else a copy."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, C)


__all__ = ['DropPath', 'ConvGN', 'Head', 'PatchMerging', 'DWConv', 'Mlp', 'Block',
           'tokens_to_map', 'map_to_tokens']
