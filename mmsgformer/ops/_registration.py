"""Python-side registration of the compiled ``mmsgformer::*`` ops.

Importing this module loads the extension ``mmsgformer._C`` (whose static initializers define the
ops and their CPU/CUDA kernels) and registers what the dispatcher needs from Python:

* fake (meta) kernels for ``sg_aggregate``, ``sg_aggregate_backward`` and the three
  ``dot_product_attention*`` ops, so ``torch.compile`` and FakeTensor tracing see the output shapes
  without running the kernels;
* the autograd formulas: for ``sg_aggregate`` gradients to ``tokens``, ``weight`` and ``bias``
  (none to ``order``; only ``tokens``, ``order`` and ``weight`` are saved for backward, never a
  permuted copy of the tokens); for the two attention ops gradients to ``q``, ``k`` and ``v``
  from ``dot_product_attention_backward`` (none through the log-sum-exp and the key mass;
  design §18).

On torch >= 2.4 both go through ``torch.library.register_fake`` / ``register_autograd``. Older
torch (2.1-2.3) lacks them: the same fake functions become Python ``Meta`` kernels and the same
formula a Python ``Autograd`` kernel running :class:`SgAggregateFunction`, both registered with
``torch.library.Library``; both ops are differentiable either way.
``MMSGFORMER_LEGACY_REGISTRATION=1`` selects the older path on new torch (to test it).

It raises ImportError when the extension is not built.
"""
import os
from typing import List, Sequence, Tuple

import torch

from .. import _C  # noqa: F401  (loads the shared library: defines torch.ops.mmsgformer.*)
from ..compat import HAS_REGISTER_AUTOGRAD, HAS_REGISTER_FAKE

LEGACY = (os.environ.get('MMSGFORMER_LEGACY_REGISTRATION', '0') not in ('', '0')
          or not (HAS_REGISTER_FAKE and HAS_REGISTER_AUTOGRAD))

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _num_out(op: str, tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
             seg_starts: Sequence[int], seg_lengths: Sequence[int],
             group_sizes: Sequence[int]) -> int:
    """Shape checks of the C++ op, on metadata only; returns the number of output tokens."""
    if tokens.dim() != 3:
        raise ValueError(f'{op}: tokens must be (B, N, C), got shape {tuple(tokens.shape)}')
    if tokens.dtype not in _FLOAT_DTYPES:
        raise ValueError(f'{op}: tokens dtype must be float32, float64, float16 or bfloat16, '
                         f'got {tokens.dtype}')
    for name, t in (('order', order), ('weight', weight)):
        if t.device != tokens.device:
            raise ValueError(f'{op}: {name} is on {t.device} but tokens are on {tokens.device}')
    B, N, _ = tokens.shape
    if order.dim() != 2 or order.shape[0] != B or order.shape[1] != N:
        raise ValueError(f'{op}: order must be (B, N) = {(B, N)} like tokens, '
                         f'got {tuple(order.shape)}')
    if order.dtype != torch.int64:
        raise ValueError(f'{op}: order must be int64 (torch.sort(...).indices), got {order.dtype}')
    if not (len(seg_starts) == len(seg_lengths) == len(group_sizes)) or not group_sizes:
        raise ValueError(f'{op}: seg_starts {list(seg_starts)}, seg_lengths {list(seg_lengths)} '
                         f'and group_sizes {list(group_sizes)} must have one entry per segment')
    if weight.dim() != 1 or weight.shape[0] != sum(group_sizes):
        raise ValueError(f'{op}: weight has shape {tuple(weight.shape)} but must be '
                         f'(sum(group_sizes),) = ({sum(group_sizes)},)')
    total = 0
    for length in seg_lengths:
        total = total + length
    torch._check(total == N, lambda: f'{op}: the layout covers {total} ranks but tokens have '
                                     f'N={N}; build it with segment_layout(N, sr_ratio)')
    return sum((length + g - 1) // g for length, g in zip(seg_lengths, group_sizes))


def _sg_aggregate_fake(tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, seg_starts: List[int], seg_lengths: List[int],
                       group_sizes: List[int]) -> torch.Tensor:
    num_out = _num_out('sg_aggregate', tokens, order, weight, seg_starts, seg_lengths,
                       group_sizes)
    if bias.device != tokens.device:
        raise ValueError(f'sg_aggregate: bias is on {bias.device} but tokens are on '
                         f'{tokens.device}')
    if bias.dim() != 1 or bias.shape[0] != len(group_sizes):
        raise ValueError(f'sg_aggregate: bias must have shape ({len(group_sizes)},) '
                         f'(one per segment), got {tuple(bias.shape)}')
    return tokens.new_empty((tokens.shape[0], num_out, tokens.shape[2]))


def _sg_aggregate_backward_fake(
        grad_out: torch.Tensor, tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
        seg_starts: List[int], seg_lengths: List[int],
        group_sizes: List[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_out = _num_out('sg_aggregate_backward', tokens, order, weight, seg_starts, seg_lengths,
                       group_sizes)
    expected = (tokens.shape[0], num_out, tokens.shape[2])
    if grad_out.dim() != 3 or grad_out.shape[1] != num_out:
        raise ValueError(f'sg_aggregate_backward: grad_out must be (B, num_out, C) = {expected}, '
                         f'got {tuple(grad_out.shape)}')
    return (torch.empty_like(tokens, memory_format=torch.contiguous_format),
            weight.new_empty(weight.shape), weight.new_empty((len(group_sizes),)))


def _setup_context(ctx, inputs, output) -> None:
    tokens, order, weight, _bias, seg_starts, seg_lengths, group_sizes = inputs
    ctx.save_for_backward(tokens, order, weight)
    ctx.layout = (seg_starts, seg_lengths, group_sizes)


def _backward(ctx, grad_out: torch.Tensor):
    tokens, order, weight = ctx.saved_tensors
    need_tokens, _, need_weight, need_bias = ctx.needs_input_grad[:4]
    if not (need_tokens or need_weight or need_bias):
        return None, None, None, None, None, None, None
    grad_tokens, grad_weight, grad_bias = torch.ops.mmsgformer.sg_aggregate_backward(
        grad_out, tokens, order, weight, *ctx.layout)
    return (grad_tokens if need_tokens else None, None,
            grad_weight if need_weight else None, grad_bias if need_bias else None,
            None, None, None)


class SgAggregateFunction(torch.autograd.Function):
    """``sg_aggregate`` with the formula of :func:`_backward`, for torch without
    ``register_autograd``. Its forward runs the op below the Autograd dispatch key."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, seg_starts: List[int], seg_lengths: List[int],
                group_sizes: List[int]) -> torch.Tensor:
        """``(B, N, C)`` tokens -> ``(B, num_out, C)``, like ``torch.ops.mmsgformer.sg_aggregate``."""
        with torch._C._AutoDispatchBelowAutograd():
            out = torch.ops.mmsgformer.sg_aggregate(tokens, order, weight, bias, seg_starts,
                                                    seg_lengths, group_sizes)
        _setup_context(ctx, (tokens, order, weight, bias, seg_starts, seg_lengths, group_sizes),
                       out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return _backward(ctx, grad_out)


def _autograd_kernel(tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor, seg_starts: List[int], seg_lengths: List[int],
                     group_sizes: List[int]) -> torch.Tensor:
    """The ``Autograd`` dispatch-key kernel of ``sg_aggregate`` on torch < 2.4."""
    return SgAggregateFunction.apply(tokens, order, weight, bias, seg_starts, seg_lengths,
                                     group_sizes)


# ------------------------------------------------------------------ dot_product_attention


def _attention_output_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           op: str = 'dot_product_attention') -> Tuple[torch.Tensor, torch.Tensor]:
    """Shape checks of the C++ ops on metadata. Returns ``(out, lse)``: ``out`` with the kernel's
    memory layout ``(B, Nq, H, D)``, seen as ``(B, H, Nq, D)``; ``lse (B, H, Nq)``."""
    if q.dim() != 4:
        raise ValueError(f'{op}: q must be (B, H, Nq, D), got shape {tuple(q.shape)}')
    if q.dtype not in (torch.float32, torch.float64):
        raise ValueError(f'{op}: dtype must be float32 or float64, got {q.dtype}')
    for name, t in (('k', k), ('v', v)):
        if t.dim() != 4:
            raise ValueError(f'{op}: {name} must be (B, H, N, D), got shape {tuple(t.shape)}')
        if t.dtype != q.dtype:
            raise ValueError(f'{op}: {name} dtype {t.dtype} must equal q dtype {q.dtype}')
        if t.device != q.device:
            raise ValueError(f'{op}: {name} is on {t.device} but q is on {q.device}')
        torch._check(t.shape[0] == q.shape[0] and t.shape[1] == q.shape[1]
                     and t.shape[3] == q.shape[3],
                     lambda: f'{op}: {name} must be (B, H, Nk, D) like q {tuple(q.shape)}, '
                             f'got {tuple(t.shape)}')
    torch._check(k.shape[2] == v.shape[2], lambda: f'{op}: k has {k.shape[2]} keys but v has '
                                                   f'{v.shape[2]} values')
    B, H, Nq, D = q.shape
    return q.new_empty((B, Nq, H, D)).transpose(1, 2), q.new_empty((B, H, Nq))


def _attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return _attention_output_fake(q, k, v)


def _attention_key_mass_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out (B, H, Nq, D), lse (B, H, Nq), mass (B, Nk))``."""
    out, lse = _attention_output_fake(q, k, v, 'dot_product_attention_key_mass')
    return out, lse, q.new_empty((q.shape[0], k.shape[2]))


def _attention_backward_fake(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    op = 'dot_product_attention_backward'
    grad_q, _ = _attention_output_fake(q, k, v, op)
    for name, t in (('out', out), ('grad_out', grad_out)):
        if t.shape != q.shape:
            raise ValueError(f'{op}: {name} must be (B, H, Nq, D) = {tuple(q.shape)} like q, '
                             f'got {tuple(t.shape)}')
    if lse.shape != q.shape[:3]:
        raise ValueError(f'{op}: lse must be (B, H, Nq) = {tuple(q.shape[:3])}, '
                         f'got {tuple(lse.shape)}')
    return (grad_q, torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _attention_setup_context(ctx, inputs, output) -> None:
    """Both forward ops: save ``q, k, v, out, lse`` (what a flash kernel saves); the
    log-sum-exp and the key mass are not differentiable."""
    q, k, v, scale = inputs
    out, lse = output[0], output[1]
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _attention_backward(ctx, grad_out: torch.Tensor, *_not_differentiable):
    """Gradients to ``q, k, v`` from ``dot_product_attention_backward`` (the formulas of
    ``csrc/dot_product_attention.h``; the probabilities are recomputed from the log-sum-exp,
    never held)."""
    q, k, v, out, lse = ctx.saved_tensors
    need_q, need_k, need_v = ctx.needs_input_grad[:3]
    if not (need_q or need_k or need_v):
        return None, None, None, None
    grad_q, grad_k, grad_v = torch.ops.mmsgformer.dot_product_attention_backward(
        grad_out, q, k, v, out, lse, ctx.scale)
    return (grad_q if need_q else None, grad_k if need_k else None,
            grad_v if need_v else None, None)


class DotProductAttentionFunction(torch.autograd.Function):
    """``dot_product_attention`` (``key_mass=False``) or ``dot_product_attention_key_mass``
    with the gradients of :func:`_attention_backward`, for torch without ``register_autograd``."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                key_mass: bool) -> Tuple[torch.Tensor, ...]:
        """``q (B, H, Nq, D)``, ``k, v (B, H, Nk, D)`` -> the op's outputs."""
        op = (torch.ops.mmsgformer.dot_product_attention_key_mass if key_mass
              else torch.ops.mmsgformer.dot_product_attention)
        with torch._C._AutoDispatchBelowAutograd():
            outputs = op(q, k, v, scale)
        _attention_setup_context(ctx, (q, k, v, scale), outputs)
        return outputs

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, *_not_differentiable):
        return _attention_backward(ctx, grad_out) + (None, )


def _attention_autograd_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``Autograd`` dispatch-key kernel of ``dot_product_attention`` on torch < 2.4."""
    return DotProductAttentionFunction.apply(q, k, v, scale, False)


def _attention_key_mass_autograd_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                        scale: float) -> Tuple[torch.Tensor, ...]:
    """The ``Autograd`` kernel of ``dot_product_attention_key_mass`` on torch < 2.4."""
    return DotProductAttentionFunction.apply(q, k, v, scale, True)


if LEGACY:
    # Kept alive for the life of the process: the registrations go when the Library is freed.
    _LIB = torch.library.Library('mmsgformer', 'IMPL')
    _LIB.impl('sg_aggregate', _sg_aggregate_fake, 'Meta')
    _LIB.impl('sg_aggregate_backward', _sg_aggregate_backward_fake, 'Meta')
    _LIB.impl('sg_aggregate', _autograd_kernel, 'Autograd')
    _LIB.impl('dot_product_attention', _attention_fake, 'Meta')
    _LIB.impl('dot_product_attention', _attention_autograd_kernel, 'Autograd')
    _LIB.impl('dot_product_attention_key_mass', _attention_key_mass_fake, 'Meta')
    _LIB.impl('dot_product_attention_key_mass', _attention_key_mass_autograd_kernel, 'Autograd')
    _LIB.impl('dot_product_attention_backward', _attention_backward_fake, 'Meta')
else:
    torch.library.register_fake('mmsgformer::sg_aggregate', _sg_aggregate_fake)
    torch.library.register_fake('mmsgformer::sg_aggregate_backward', _sg_aggregate_backward_fake)
    torch.library.register_autograd('mmsgformer::sg_aggregate', _backward,
                                    setup_context=_setup_context)
    torch.library.register_fake('mmsgformer::dot_product_attention', _attention_fake)
    torch.library.register_autograd('mmsgformer::dot_product_attention', _attention_backward,
                                    setup_context=_attention_setup_context)
    torch.library.register_fake('mmsgformer::dot_product_attention_key_mass',
                                _attention_key_mass_fake)
    torch.library.register_autograd('mmsgformer::dot_product_attention_key_mass',
                                    _attention_backward, setup_context=_attention_setup_context)
    torch.library.register_fake('mmsgformer::dot_product_attention_backward',
                                _attention_backward_fake)
