"""Segment layout of self-guided attention: how ranked tokens are cut into segments and groups.

This is the single rule shared by the backbone, the C++/CUDA op and the pure-PyTorch reference
(docs/design.md §6 for the official table, §11 for the generalization below).

Tokens are ranked by ascending significance (rank 0 = least significant). The ranks are cut into
segments by fixed fractions of the token count ``N``, and each segment is aggregated in groups of
``g_k`` consecutive ranks (one output token per group). The fractions and group sizes are the
official ones and depend only on the stage's sr ratio:

====  ================================  =====================
 r    segments (fractions of N)         group sizes ``g_k``
====  ================================  =====================
 8    1/4, 1/2, 1/4                     196, 56, 28
 4    1/4, 1/2, 1/4                     49, 14, 7
 2    1/2, 1/2                          2, 1
====  ================================  =====================

Generalization to any ``N`` (official sizes have ``N % 784 == 0`` in stage 1, ``N % 196 == 0`` in
stage 2 and ``N % 4 == 0`` in stage 3, and then this rule *is* the official one):

* segment boundaries are ``floor(N * q / 4)`` for the cumulative quarter counts ``q``
  (integer arithmetic, so no rounding surprises);
* a segment of ``L`` ranks yields ``ceil(L / g_k)`` groups; groups are laid from the segment's
  start, so only the last group of a segment can be short;
* the missing slots of a short group contribute nothing (as if they held zero tokens): the output
  is ``sum_{t < len} w_k[t] * u[start + t] + b_k``.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

# sr ratio -> ((quarters of N, group size), ...) in ascending-significance order.
SEGMENT_RULES: Dict[int, Tuple[Tuple[int, int], ...]] = {
    8: ((1, 196), (2, 56), (1, 28)),
    4: ((1, 49), (2, 14), (1, 7)),
    2: ((2, 2), (2, 1)),
}


@dataclass(frozen=True)
class SegmentLayout:
    """Where each segment sits among the ranks and how it is grouped.

    Attributes:
        num_tokens: ``N``, the number of ranked tokens.
        starts: first rank of each segment.
        lengths: number of ranks in each segment.
        group_sizes: ``g_k``, ranks merged into one output token.
        counts: output tokens of each segment, ``ceil(length / g_k)``.
        out_offsets: index of each segment's first output token.
    """

    num_tokens: int
    starts: Tuple[int, ...]
    lengths: Tuple[int, ...]
    group_sizes: Tuple[int, ...]
    counts: Tuple[int, ...]
    out_offsets: Tuple[int, ...]

    @property
    def num_segments(self) -> int:
        return len(self.starts)

    @property
    def num_out(self) -> int:
        """Total number of aggregated tokens (``Nk``)."""
        return sum(self.counts)

    @property
    def is_exact(self) -> bool:
        """True when every group is full (the official sizes)."""
        return all(n * g == ln for n, g, ln in zip(self.counts, self.group_sizes, self.lengths))


def group_sizes_for(sr_ratio: int) -> Tuple[int, ...]:
    """Group sizes ``g_k`` (the ``f_k`` in_features) of an SGA block with this sr ratio."""
    if sr_ratio not in SEGMENT_RULES:
        raise ValueError(f'sr_ratio={sr_ratio} has no self-guided segment rule; '
                         f'supported sr ratios are {sorted(SEGMENT_RULES)}')
    return tuple(g for _, g in SEGMENT_RULES[sr_ratio])


def segment_layout(num_tokens: int, sr_ratio: int) -> SegmentLayout:
    """The segment layout for ``num_tokens`` ranked tokens in a stage with ``sr_ratio``.

    Args:
        num_tokens: ``N = H * W`` of the stage (must be >= 1).
        sr_ratio: the stage's spatial-reduction ratio (8, 4 or 2).

    Returns:
        The :class:`SegmentLayout`; at the official sizes it reproduces the official counts
        (e.g. N=3136, r=8 -> counts (4, 28, 28); N=196, r=2 -> (49, 98)).
    """
    if num_tokens < 1:
        raise ValueError(f'num_tokens={num_tokens} must be >= 1')
    group_sizes = group_sizes_for(sr_ratio)
    starts, lengths, counts, offsets = [], [], [], []
    quarters_done, out = 0, 0
    for (quarters, g) in SEGMENT_RULES[sr_ratio]:
        begin = num_tokens * quarters_done // 4
        quarters_done += quarters
        end = num_tokens * quarters_done // 4
        length = end - begin
        count = -(-length // g)
        starts.append(begin)
        lengths.append(length)
        counts.append(count)
        offsets.append(out)
        out += count
    return SegmentLayout(num_tokens, tuple(starts), tuple(lengths), group_sizes, tuple(counts),
                         tuple(offsets))
