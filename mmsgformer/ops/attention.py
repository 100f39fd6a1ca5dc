"""Scaled dot-product attention without a mask: the Python face of the compiled CPU kernels.

``softmax(scale * q k^T) v`` is what the self-guided blocks and stage 4 compute, and, with the
mean probability of each key, the coarse branch of hybrid-scale attention.
``torch.ops.mmsgformer.dot_product_attention`` (and ``dot_product_attention_key_mass``)
compute them on the CPU; their vector kernels (float32, head dimension 32: every SG-Former-S/M
head, and all but stage 1 of SG-Former-B; AVX-512, or AVX2 + FMA) are faster than PyTorch's
flash kernel there. The contract, the formulas and the measurements are docs/design.md §18.
"""
import os
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .reference import dot_product_attention_key_mass_reference, dot_product_attention_reference

__all__ = ['dot_product_attention', 'dot_product_attention_reference',
           'dot_product_attention_key_mass', 'dot_product_attention_key_mass_reference',
           'cpu_kernel', 'VECTOR_KERNELS', 'vector_kernels_here', 'vector_kernel_applies',
           'vector_training_applies', 'ATTENTION_IMPLS']

ATTENTION_IMPLS = ('auto', 'op', 'reference', 'torch')

_kernel_cache: Dict[Tuple[int, str], str] = {}

# ``MMSGFORMER_CPU_ATTENTION``: ``auto`` (default) takes the ops where a vector kernel applies
# (AVX-512, else AVX2); ``avx2`` the same with the AVX2 kernel even on an AVX-512 CPU (the C++
# kernel choice reads it too); ``torch`` keeps PyTorch's attention kernels everywhere (the
# numerics of a CPU without AVX2, e.g. to reproduce a result across machines).
CPU_ATTENTION_ENV = 'MMSGFORMER_CPU_ATTENTION'
_CPU_ATTENTION_CHOICES = ('auto', 'avx2', 'torch')
VECTOR_KERNELS = ('avx512', 'avx2')


def _cpu_attention_choice(environ=os.environ) -> str:
    """``MMSGFORMER_CPU_ATTENTION``, checked (see CPU_ATTENTION_ENV)."""
    value = environ.get(CPU_ATTENTION_ENV, 'auto')
    if value == '':
        return 'auto'
    if value not in _CPU_ATTENTION_CHOICES:
        raise ValueError(f'{CPU_ATTENTION_ENV}={value!r} must be one of '
                         f'{_CPU_ATTENTION_CHOICES}')
    return value


def _ops_allowed(environ=os.environ) -> bool:
    """Whether the environment lets the model take the attention ops (see CPU_ATTENTION_ENV)."""
    return _cpu_attention_choice(environ) != 'torch'


def cpu_kernel(head_dim: int) -> str:
    """Which CPU kernel the compiled op runs for float32 and ``head_dim``: ``'avx512'``,
    ``'avx2'`` (the vector kernels), ``'portable'``, or ``'none'`` when the extension is not
    built."""
    from . import op_available
    key = (head_dim, os.environ.get(CPU_ATTENTION_ENV, ''))
    if key not in _kernel_cache:
        _kernel_cache[key] = (torch.ops.mmsgformer.dot_product_attention_cpu_kernel(head_dim)
                              if op_available() else 'none')
    return _kernel_cache[key]


def vector_kernels_here() -> Tuple[str, ...]:
    """The vector kernels this CPU runs at head width 32, best first: ``('avx512', 'avx2')``
    with AVX-512 (the AVX2 one by ``MMSGFORMER_CPU_ATTENTION=avx2``), ``('avx2',)`` with AVX2
    only, ``()`` without either or without the extension."""
    best = cpu_kernel(32)
    return VECTOR_KERNELS[VECTOR_KERNELS.index(best):] if best in VECTOR_KERNELS else ()


def vector_kernel_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the ops' vector kernels serve this call: float32 CPU tensors, head dimension 32,
    a CPU with AVX-512 or AVX2, not turned off by ``MMSGFORMER_CPU_ATTENTION=torch``; where
    autograd records the call, also :func:`vector_training_applies`."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return vector_training_applies(q, k, v)
    if q.device.type != 'cpu' or q.dtype != torch.float32 or q.dim() != 4:
        return False
    return _ops_allowed() and cpu_kernel(q.shape[-1]) in VECTOR_KERNELS


def vector_training_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the ops' vector forward and backward serve a training call: float32 CPU
    tensors, head dimension 32, a CPU with AVX-512 or AVX2, and at least as many ``(b, h)``
    pairs as threads (the backward's work items; fewer would leave threads idle)."""
    if q.device.type != 'cpu' or q.dtype != torch.float32 or q.dim() != 4:
        return False
    if q.shape[0] * q.shape[1] < torch.get_num_threads():
        return False
    return _ops_allowed() and cpu_kernel(q.shape[-1]) in VECTOR_KERNELS


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                          impl: str = 'auto') -> torch.Tensor:
    """``softmax(scale * q k^T) v``.

    Args:
        q: ``(B, H, Nq, D)`` queries (any strides).
        k, v: ``(B, H, Nk, D)`` keys and values.
        scale: the logit scale.
        impl: ``'auto'``: the compiled op where a vector kernel applies
            (:func:`vector_kernel_applies`: inference, or training with enough heads), else
            ``F.scaled_dot_product_attention``;
            ``'op'``: the compiled op (CPU, float32/float64; error if not built); ``'torch'``:
            ``F.scaled_dot_product_attention``; ``'reference'``: the spelled-out softmax.

    Returns:
        ``(B, H, Nq, D)``; from the op its memory is ``(B, Nq, H, D)`` (PyTorch's flash
        kernel's layout), so ``out.transpose(1, 2).reshape(B, Nq, H * D)`` copies nothing.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'impl={impl!r} must be one of {ATTENTION_IMPLS}')
    if impl == 'reference':
        return dot_product_attention_reference(q, k, v, scale)
    if impl == 'op' or (impl == 'auto' and vector_kernel_applies(q, k, v)):
        _check_op_usable(q)
        return torch.ops.mmsgformer.dot_product_attention(q, k, v, float(scale))[0]
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def dot_product_attention_key_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`dot_product_attention` and the mean probability each key receives (over heads and
    queries), from the compiled op: two passes over the scores, never an ``(Nq, Nk)`` matrix.

    Args:
        q: ``(B, H, Nq, D)``; k, v: ``(B, H, Nk, D)``; CPU, float32 or float64.
        scale: the logit scale.

    Returns:
        ``(out (B, H, Nq, D), mass (B, Nk))``; the mass carries no gradient.
    """
    _check_op_usable(q)
    out, _, mass = torch.ops.mmsgformer.dot_product_attention_key_mass(q, k, v, float(scale))
    return out, mass


def _check_op_usable(q: torch.Tensor) -> None:
    from . import op_available
    if q.device.type != 'cpu':
        raise ValueError(f"impl='op': q is on {q.device} but the op has only a CPU kernel "
                         f"(use impl='torch', F.scaled_dot_product_attention, there)")
    if not op_available():
        raise RuntimeError("impl='op' but the mmsgformer C++ extension is not built; "
                           "reinstall with `pip install -e . --no-build-isolation --use-pep517`")
