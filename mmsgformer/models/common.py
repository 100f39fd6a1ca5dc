"""What the model modules share: the token/map layout helpers, stochastic depth and the
validation of the backbones' common arguments.

``arch`` (a zoo name or a dict with exactly the required keys), ``out_indices``,
``frozen_stages``, ``drop_path_rate`` and the input tensor are checked here, once, with the same
rules and messages for SG-Former and Focal Transformer.
"""
from typing import Dict, Iterable, Mapping, Sequence, Tuple, Union

import torch
import torch.nn as nn


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
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def select_arch(arch: Union[str, Mapping], arch_zoo: Mapping[str, Dict], keys: Iterable[str],
                backbone: str) -> Dict:
    """The arch settings: ``arch_zoo[arch.lower()]`` or a copy of a dict with exactly ``keys``.

    Raises ``ValueError`` naming the unknown name (and the known ones) or the missing and
    unexpected keys. The values themselves are checked by each backbone.
    """
    keys = tuple(keys)
    if isinstance(arch, str):
        if arch.lower() not in arch_zoo:
            raise ValueError(f'arch={arch!r} is not a known {backbone} arch; choose one of '
                             f'{sorted(set(arch_zoo))} or pass a dict with keys {keys}')
        return dict(arch_zoo[arch.lower()])
    if not isinstance(arch, Mapping):
        raise ValueError(f'arch={arch!r} must be a string or a dict with keys {keys}')
    if set(arch) != set(keys):
        raise ValueError(f'arch dict must have exactly the keys {keys}; '
                         f'missing {sorted(set(keys) - set(arch))}, '
                         f'unexpected {sorted(set(arch) - set(keys))}')
    return dict(arch)


def check_out_indices(out_indices: Union[int, Sequence[int]], num_stages: int) -> Tuple[int, ...]:
    """``out_indices`` as sorted stage indices in ``[0, num_stages)`` (outputs come in stage
    order, as in mmdet/mmpretrain). Accepts one int or a sequence; negative indices count from
    the last stage; rejects booleans, repeats and an empty sequence."""
    if _is_int(out_indices):
        out_indices = (out_indices, )
    if not isinstance(out_indices, (list, tuple)) or len(out_indices) == 0:
        raise ValueError(f'out_indices={out_indices!r} must be a non-empty sequence of stage '
                         f'indices in [0, {num_stages - 1}]')
    parsed = []
    for idx in out_indices:
        if not _is_int(idx) or not -num_stages <= idx < num_stages:
            raise ValueError(f'out_indices={tuple(out_indices)!r}: entry {idx!r} must be an int '
                             f'in [0, {num_stages - 1}] (or [-{num_stages}, -1])')
        if idx % num_stages in parsed:
            raise ValueError(f'out_indices={tuple(out_indices)!r} repeats stage '
                             f'{idx % num_stages}')
        parsed.append(idx % num_stages)
    return tuple(sorted(parsed))


def check_frozen_stages(frozen_stages: int, num_stages: int) -> int:
    """``frozen_stages`` in ``[-1, num_stages]``: -1 freezes nothing, 0 the stem (and SG-Former's
    position table), ``k`` also stages ``0..k-1`` (0-based)."""
    if not _is_int(frozen_stages) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(f'frozen_stages={frozen_stages!r} must be an int in [-1, {num_stages}] '
                         f'(-1: none, 0: the stem, k: the stem and stages 0..k-1)')
    return frozen_stages


def check_drop_path_rate(drop_path_rate: float) -> float:
    """``drop_path_rate`` in ``[0, 1)``."""
    if (not isinstance(drop_path_rate, (int, float)) or isinstance(drop_path_rate, bool)
            or not 0. <= drop_path_rate < 1.):
        raise ValueError(f'drop_path_rate={drop_path_rate!r} must be a number in [0, 1)')
    return float(drop_path_rate)


def check_image_batch(x: torch.Tensor, in_channels: int, min_size: int, backbone: str) -> None:
    """``x`` must be a floating-point ``(B, in_channels, H, W)`` tensor with ``H, W >=
    min_size``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'{backbone} input of shape {shape} must be 4-D (B, {in_channels}, H, W)')
    if not x.is_floating_point():
        raise ValueError(f'{backbone} input has dtype {x.dtype}; it must be a floating-point '
                         f'tensor (normalize images first, e.g. with the data preprocessor)')
    if x.shape[1] != in_channels:
        raise ValueError(f'{backbone} input of shape {tuple(x.shape)} must have {in_channels} '
                         f'channels')
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f'{backbone} input of shape {tuple(x.shape)} is too small: H and W '
                         f'must be >= {min_size} pixels')


def is_symbolic(*sizes) -> bool:
    """True when a size is a ``torch.SymInt`` (``torch.export`` with dynamic shapes,
    ``torch.compile(dynamic=True)``): size branches then take their general path, so that one
    graph serves every size (a branch on a symbolic size would pin the graph to the traced one)."""
    return any(isinstance(s, torch.SymInt) for s in sizes)


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``: a channels-last view of contiguous tokens (no copy)."""
    B, N, C = x.shape
    return x.contiguous().view(B, H, W, C).permute(0, 3, 1, 2)


def add_fresh(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other`` where ``fresh`` is a temporary nothing else holds (a branch output).

    Inference: in place into ``fresh`` (no new buffer; large fresh buffers cost page faults).
    With autograd: out of place, because ``fresh`` is usually a view (a 3-D ``F.linear``
    returns one) and an in-place add into a view makes autograd clone the whole gradient in
    backward (a ``CopySlices`` node).
    """
    if torch.is_grad_enabled() and (fresh.requires_grad or other.requires_grad):
        return fresh + other
    return fresh.add_(other)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``: a view when ``x`` is channels-last, else a copy."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, C)


__all__ = ['tokens_to_map', 'map_to_tokens', 'add_fresh', 'DropPath', 'select_arch', 'check_out_indices', 'check_frozen_stages',
           'check_drop_path_rate', 'check_image_batch', 'is_symbolic']
