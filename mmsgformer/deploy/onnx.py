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

import torch

from mmsgformer.ops.layout import SegmentLayout

__all__ = ['sg_aggregate_onnx', 'custom_translation_table']


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


def custom_translation_table() -> dict:
    """Extra translations for ``torch.onnx.export(custom_translation_table=...)``.

    Both concern size arithmetic on *symbolic* sizes (``dynamic_shapes``), where onnxscript's own
    translations are wrong or fail:

    * ``operator.floordiv`` (``a // b`` on sizes): onnxscript emits ONNX ``Div``, which truncates
      toward zero; Python floors. ``-(-n // g)`` (the ceiling used by the segment layout and the
      window padding) then comes out one too small for ``n % g != 0``, and a padding size goes
      negative. Here: ``(a - Mod(a, b)) / b``, exact floor division for any signs.
    * ``aten.remainder.Scalar`` with a symbolic divisor (``arange(N) % H``): onnxscript needs a
      Python number. Here: ONNX ``Mod`` for integers (Python's sign convention), ``a - floor(a /
      b) * b`` for floats, like torch.
    """
    import operator

    from onnxscript import opset18 as op

    def floordiv(self, other):
        other = op.CastLike(other, self)
        return op.Div(op.Sub(self, op.Mod(self, other)), other)

    def remainder_scalar(self, other):
        other = op.CastLike(other, self)
        if self.dtype is not None and self.dtype.is_integer():
            return op.Mod(self, other)
        return op.Sub(self, op.Mul(op.Floor(op.Div(self, other)), other))

    return {operator.floordiv: floordiv, torch.ops.aten.remainder.Scalar: remainder_scalar}
