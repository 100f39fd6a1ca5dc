"""Significance maps of hybrid-scale attention and the token ranking of self-guided attention.

Pure functions (design §5.1, §6 step 2). The map is built from *detached* attention probabilities:

* global part: the coarse attention ``A1 (B, g, N, Nk)`` averaged over heads, then over queries
  (the "key mass"), reshaped to the coarse grid and upsampled (nearest) to the token grid;
* local part: the window attention ``A2 (B*nW, g, w*w, w*w)`` averaged over heads, then over the
  (real) queries of each window, placed back at each key's position;
* ``S = local + global``, shape ``(B, H, W)``.

The key masses come from :func:`mmsgformer.models.attention.attention_and_key_mass` (or its
fast twin in :mod:`mmsgformer.models.fast_paths`); the functions here only place them.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .common import is_symbolic
from .fast_paths import is_tracing


@dataclass
class SignificanceRecord:
    """The significance map made by one hybrid-scale block.

    Attributes:
        stage: 0-based stage index (as in ``out_indices``).
        block: block index inside the stage (even: hybrid-scale blocks).
        sr_ratio: the stage's sr ratio (selects the segment rule of the next, self-guided block).
        significance: ``(B, H, W)`` map on the stage's real (unpadded) token grid.
    """

    stage: int
    block: int
    sr_ratio: int
    significance: torch.Tensor


def global_significance(mass: torch.Tensor, coarse_hw: Tuple[int, int],
                        out_hw: Tuple[int, int]) -> torch.Tensor:
    """Global part of the map from the coarse branch's key mass.

    Args:
        mass: ``(B, Nk)`` coarse-branch probabilities averaged over heads and queries
            (``A1.mean(1).mean(1)``), ``Nk = Hr * Wr``.
        coarse_hw: ``(Hr, Wr)``, the grid of the ``sr`` conv output.
        out_hw: ``(H, W)`` token grid.

    Returns:
        ``(B, H, W)``: mean attention each coarse cell receives, nearest-upsampled.
    """
    s = mass.reshape(mass.shape[0], 1, coarse_hw[0], coarse_hw[1])
    return F.interpolate(s, size=out_hw, mode='nearest')[:, 0]


def window_query_weights(H: int, W: int, window: int, device: torch.device,
                         dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which window slots hold real tokens when ``(H, W)`` is padded to multiples of ``window``.

    Returns:
        ``mask (nW, window*window)`` 1 for real tokens, 0 for padding, and ``counts (nW, 1)``
        the number of real tokens of each window. Windows row-major, slots row-major.
    """
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    m = torch.zeros(Hp, Wp, device=device, dtype=dtype)
    m[:H, :W] = 1
    m = m.view(Hp // window, window, Wp // window, window).permute(0, 2, 1, 3)
    m = m.reshape(-1, window * window)
    return m, m.sum(1, keepdim=True)


def local_significance(mass: torch.Tensor, batch: int, H: int, W: int,
                       window: int) -> torch.Tensor:
    """Local part of the map from the window branch's key mass.

    Args:
        mass: ``(B*nW, w*w)`` window-branch probabilities averaged over heads, then over each
            window's real queries; windows row-major over the padded grid ``(Hp, Wp)``
            (multiples of ``window``), slots row-major.
        batch: ``B``.
        H, W: real token grid.
        window: window side ``w``.

    Returns:
        ``(B, H, W)``: for each key, the mean attention it receives from its window's queries.
    """
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    nh, nw = Hp // window, Wp // window
    s = mass.reshape(batch, nh, nw, window, window).permute(0, 1, 3, 2, 4).reshape(batch, Hp, Wp)
    if is_symbolic(H, W) or Hp != H or Wp != W:
        s = s[:, :H, :W]
    return s


_COL_TO_ROW: Dict[Tuple[int, int, str], torch.Tensor] = {}


def col_to_row_index(H: int, W: int, device: torch.device) -> torch.Tensor:
    """``(N,)`` int64 map from a column-major position ``x*H + y`` to the row-major ``y*W + x``."""
    if is_tracing():  # no traced or fake tensor may enter the cache
        p = torch.arange(H * W, device=device)
        return (p % H) * W + torch.div(p, H, rounding_mode='floor')
    key = (H, W, str(device))
    idx = _COL_TO_ROW.get(key)
    if idx is None:
        p = torch.arange(H * W, device=device)
        idx = (p % H) * W + torch.div(p, H, rounding_mode='floor')
        if len(_COL_TO_ROW) > 64:
            _COL_TO_ROW.clear()
        _COL_TO_ROW[key] = idx
    return idx


def rank_tokens(significance: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two rankings of self-guided attention (ascending significance, rank 0 = least).

    The row-major listing ``S.reshape(B, N)`` and the column-major listing
    ``S.transpose(1, 2).reshape(B, N)`` are sorted by two separate ``torch.sort`` calls, as in the
    official code (they differ only in the order of exact ties). The column-major ranking is
    returned as indices into the *row-major* token sequence.

    Args:
        significance: ``(B, H, W)``.

    Returns:
        ``(order_row, order_col)``, each ``(B, N)`` int64: token index (row-major) of each rank.
    """
    B, H, W = significance.shape
    s_row = significance.reshape(B, H * W)
    s_col = significance.transpose(1, 2).reshape(B, H * W)
    order_row = torch.sort(s_row, dim=1).indices
    pi_col = torch.sort(s_col, dim=1).indices
    order_col = col_to_row_index(H, W, significance.device)[pi_col]
    return order_row, order_col


__all__ = ['SignificanceRecord', 'global_significance', 'local_significance',
           'window_query_weights', 'col_to_row_index', 'rank_tokens']
