"""The custom ops' Python face: significance-guided key/value aggregation (here) and
dot-product attention (:mod:`.attention`, design §18).

``sg_aggregate`` dispatches to the compiled ``torch.ops.mmsgformer.sg_aggregate`` when the
extension is built, and to the pure-PyTorch reference otherwise (or when asked). The contract
(inputs, layout, gradients, checks, implementations) is docs/design.md §17.

Checks: the compiled op validates dtypes, devices, shapes and the layout itself (``ValueError``
naming the argument). On the CPU it always checks that ``order`` is a permutation; on CUDA only
indices are bounds-checked in the kernel, and the permutation check runs in debug mode
(``set_debug(True)`` or the environment variable ``MMSGFORMER_DEBUG=1``) for every implementation.
Non-contiguous inputs are accepted and made contiguous.
"""
import os
import warnings

import torch

from ..compat import is_compiling  # torch.compiler.is_compiling needs torch >= 2.3
from .attention import (ATTENTION_IMPLS, dot_product_attention, dot_product_attention_key_mass,
                        dot_product_attention_key_mass_reference, dot_product_attention_reference,
                        vector_kernel_applies, vector_training_applies)
from .layout import SegmentLayout, group_sizes_for, segment_layout
from .reference import sg_aggregate_reference

__all__ = ['SegmentLayout', 'segment_layout', 'group_sizes_for', 'sg_aggregate',
           'sg_aggregate_reference', 'op_available', 'set_debug', 'debug_enabled', 'IMPLS',
           'dot_product_attention', 'dot_product_attention_reference',
           'dot_product_attention_key_mass', 'dot_product_attention_key_mass_reference',
           'vector_kernel_applies', 'vector_training_applies', 'ATTENTION_IMPLS']

IMPLS = ('auto', 'op', 'reference')


def _debug_from_env(environ=os.environ) -> bool:
    """Debug mode requested by the environment: ``MMSGFORMER_DEBUG`` set and not ``0``."""
    return environ.get('MMSGFORMER_DEBUG', '0').strip().lower() not in ('', '0', 'false', 'no')


_debug = _debug_from_env()


def set_debug(enabled: bool) -> None:
    """Turn the (slower) debug checks of :func:`sg_aggregate` on or off.

    In debug mode every call checks that each ``order[b]`` is a permutation of ``0..N-1``
    (a sort of ``order`` per call). Also enabled by ``MMSGFORMER_DEBUG=1``.
    """
    global _debug
    _debug = bool(enabled)


def debug_enabled() -> bool:
    """Whether :func:`sg_aggregate` runs its debug checks."""
    return _debug


def op_available() -> bool:
    """True when the compiled op is registered (the C++ extension is built)."""
    try:
        from . import _registration  # noqa: F401  (loads the extension, registers fake/autograd)
    except ImportError as err:
        _warn_unloadable(err)
        return False
    return (hasattr(torch.ops.mmsgformer, 'sg_aggregate')
            and hasattr(torch.ops.mmsgformer, 'dot_product_attention'))


_warned = False


def _warn_unloadable(err: ImportError) -> None:
    """Warn once when an op library exists but does not load (built against another torch)."""
    global _warned
    if _warned:
        return
    _warned = True
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    built = [f for f in os.listdir(package_dir) if f.startswith('_C.') and f.endswith('.so')]
    if not built:
        return
    warnings.warn(f'mmsgformer: {built[0]} exists but does not load with torch '
                  f'{torch.__version__} ({err}); it was probably built against another torch. '
                  f'The pure-PyTorch reference is used instead; rebuild with `pip install -e . '
                  f'--no-build-isolation --use-pep517`.', RuntimeWarning, stacklevel=3)


def _check_permutation(order: torch.Tensor) -> None:
    """Debug check: every row of ``order`` (B, N) is a permutation of 0..N-1."""
    msg = ('sg_aggregate: order is not a permutation of 0..N-1 in every row '
           '(expected torch.sort(significance).indices)')
    n = order.shape[1]
    ok = (torch.sort(order, dim=1).values ==
          torch.arange(n, device=order.device, dtype=order.dtype)).all()
    if is_compiling():
        torch._assert_async(ok, msg)  # traceable: no graph break in debug mode
    elif not bool(ok):
        raise ValueError(msg)


def sg_aggregate(tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor, layout: SegmentLayout, impl: str = 'auto') -> torch.Tensor:
    """Aggregate rank-ordered tokens into ``(B, layout.num_out, C)`` keys/values input.

    Args:
        tokens: ``(B, N, C)`` float32/float64/float16/bfloat16 tokens, row-major spatial order.
        order: ``(B, N)`` int64, ``order[b, p]`` = token index of rank ``p`` (a permutation).
        weight: ``(sum_k g_k,)`` concatenated group weights (the ``f_k`` Linear weights).
        bias: ``(K,)`` one bias per segment. Weight and bias have the tokens' dtype, or
            float32 with float16/bfloat16 tokens.
        layout: :func:`segment_layout` for ``N`` tokens.
        impl: ``'auto'`` (the compiled op when built, else the reference), ``'op'`` (the
            compiled op; error if not built) or ``'reference'``.

    Returns:
        ``(B, layout.num_out, C)`` aggregated tokens, least significant segment first.
    """
    if impl not in IMPLS:
        raise ValueError(f'impl={impl!r} must be one of {IMPLS}')
    if not isinstance(layout, SegmentLayout):
        raise ValueError(f'layout must be a SegmentLayout (from segment_layout(N, sr_ratio)), '
                         f'got {type(layout).__name__}')
    if tokens.dim() != 3:
        raise ValueError(f'tokens must be (B, N, C), got shape {tuple(tokens.shape)}')
    if torch.onnx.is_in_onnx_export():  # ONNX has no custom op: standard operators instead
        from mmsgformer.deploy.onnx import sg_aggregate_onnx
        return sg_aggregate_onnx(tokens, order, weight, bias, layout)
    if not torch.jit.is_tracing() and tokens.shape[1] != layout.num_tokens:
        raise ValueError(f'layout is for N={layout.num_tokens} tokens but tokens have '
                         f'N={tokens.shape[1]}; build it with segment_layout(N, sr_ratio)')
    if _debug:
        if order.dim() != 2 or order.shape != tokens.shape[:2]:
            raise ValueError(f'order must be (B, N) = {tuple(tokens.shape[:2])}, '
                             f'got {tuple(order.shape)}')
        _check_permutation(order)
    if impl == 'reference' or (impl == 'auto' and not op_available()):
        return sg_aggregate_reference(tokens, order, weight, bias, layout)
    if not op_available():
        raise RuntimeError("impl='op' but the mmsgformer C++ extension is not built; "
                           "reinstall with `pip install -e . --no-build-isolation --use-pep517`")
    # int(): under torch.jit.trace sizes are 0-dim tensors and the layout holds them; the
    # tracer cannot record tensors in an int[] argument (INTERNAL ASSERT isIntList).
    return torch.ops.mmsgformer.sg_aggregate(tokens, order, weight, bias,
                                             [int(v) for v in layout.starts],
                                             [int(v) for v in layout.lengths],
                                             [int(v) for v in layout.group_sizes])
