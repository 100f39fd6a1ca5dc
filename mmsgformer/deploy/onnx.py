"""ONNX export support: sg_aggregate in standard operators, and an export context.

``torch.onnx.export`` (torch >= 2.9: the dynamo-based exporter, ``torch.export`` + onnxscript)
cannot translate the compiled ``mmsgformer::sg_aggregate`` op: an ONNX runtime would need a custom
operator library. While an export runs (``torch.onnx.is_in_onnx_export()``),
:func:`mmsgformer.ops.sg_aggregate` therefore dispatches to :func:`sg_aggregate_onnx`, the same
computation written with ``gather``, slicing, ``cat``, ``reshape`` and ``matmul``, i.e. ONNX
``GatherElements``/``Gather``, ``Slice``, ``Concat``, ``Reshape`` and ``MatMul``. The ranking
(``torch.sort``) becomes ONNX ``TopK``.

:func:`sg_aggregate_onnx` has no Python branch on sizes: every segment always gets its (maybe
empty) zero padding and (maybe empty) output, so with symbolic sizes (``dynamic_shapes``) one
graph serves every token count.
"""
import contextlib
from typing import Iterator

import torch

from mmsgformer.ops.layout import SegmentLayout

__all__ = ['sg_aggregate_onnx', 'export_context', 'custom_translation_table']


def sg_aggregate_onnx(tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor, layout: SegmentLayout) -> torch.Tensor:
    """Significance-guided aggregation in export-friendly operators.

    Same contract and result as :func:`mmsgformer.ops.sg_aggregate_reference` (equal up to float
    rounding of the group sums).

    Args:
        tokens: ``(B, N, C)`` tokens, row-major spatial order.
        order: ``(B, N)`` int64 token index of each rank.
        weight: ``(sum_k g_k,)`` concatenated group weights.
        bias: ``(K,)`` one bias per segment.
        layout: :func:`mmsgformer.ops.segment_layout` of ``N`` (its sizes may be symbolic).

    Returns:
        ``(B, layout.num_out, C)``.
    """
    B, N, C = tokens.shape
    ranked = torch.gather(tokens, 1, order.unsqueeze(-1).expand(B, N, C))
    outs = []
    w_start = 0
    for k in range(layout.num_segments):
        start, length = layout.starts[k], layout.lengths[k]
        g, count = layout.group_sizes[k], layout.counts[k]
        seg = ranked.narrow(1, start, length)
        # zero slots of the segment's last, short group (none at the official sizes)
        seg = torch.cat([seg, seg.new_zeros(B, count * g - length, C)], dim=1)
        # (B, count, g, C) -> (B, count, C, g) @ (g, 1) -> (B, count, C)
        seg = seg.reshape(B, count, g, C).transpose(2, 3)
        w_k = weight[w_start:w_start + g].view(g, 1)
        w_start += g
        outs.append(torch.matmul(seg, w_k).squeeze(-1) + bias[k])
    return torch.cat(outs, dim=1)


def _col_to_row_index(H: int, W: int, device: torch.device) -> torch.Tensor:
    """Uncached :func:`mmsgformer.models.significance.col_to_row_index` (its cache keys on the
    sizes, which are unhashable symbols during a dynamic-shape export)."""
    p = torch.arange(H * W, device=device)
    return (p % H) * W + torch.div(p, H, rounding_mode='floor')


@contextlib.contextmanager
def export_context() -> Iterator[None]:
    """Run a model export inside this: swaps the size-keyed index cache of the ranking for its
    uncached computation (same values), and restores it afterwards."""
    from mmsgformer.models import significance
    cached = significance.col_to_row_index
    significance.col_to_row_index = _col_to_row_index
    try:
        yield
    finally:
        significance.col_to_row_index = cached


def custom_translation_table() -> dict:
    """Extra ATen -> ONNX translations for ``torch.onnx.export(custom_translation_table=...)``.

    ``aten.remainder.Scalar`` with a *symbolic* divisor (``arange(N) % H`` with a dynamic ``H``)
    fails in onnxscript's own translation, which needs a Python number: here the divisor may be
    a graph value. Integer inputs use ONNX ``Mod`` (Python's sign convention for ``fmod=0``),
    floating ones ``a - floor(a / b) * b`` like torch.
    """
    from onnxscript import opset18 as op

    def remainder_scalar(self, other):
        other = op.CastLike(other, self)
        if self.dtype is not None and self.dtype.is_integer():
            return op.Mod(self, other)
        return op.Sub(self, op.Mul(op.Floor(op.Div(self, other)), other))

    return {torch.ops.aten.remainder.Scalar: remainder_scalar}
