"""Fast paths of SG-Former: the plain modules' functions, computed with less memory or time.

Every function here has a plain counterpart that the modules in ``attention.py`` and
``blocks.py`` spell out, and a test compares the two (float64 outputs, maps and gradients). A
module takes its fast path when ``module.fast_path`` is true (the default; the backbone's
``fast_path=False`` selects the plain path everywhere) and the situation is one the fast path is
made for (see :func:`use_fast_path`).

Training (autograd on):

* :func:`attention_and_key_mass` (coarse and window branches of hybrid-scale attention): the
  output comes from ``F.scaled_dot_product_attention``, whose flash kernels keep only the
  log-sum-exp for backward instead of the ``(B, g, Nq, Nk)`` probabilities; the significance
  (key mass) is taken in a no-grad pass over query chunks that never holds the full matrix.
  In float32 with head width 32 on CPUs with AVX-512 or AVX2 the coarse branch's output and mass
  come from the op ``mmsgformer::dot_product_attention_key_mass`` instead, and the self-guided
  and standard blocks' attention from ``mmsgformer::dot_product_attention`` (:func:`attention`;
  design §18), when there are at least as many ``(b, h)`` pairs as threads.
* :func:`ffn_tail` (``fc2(GELU(z + dwconv(z)))``) and :func:`norm_act_conv`
  (``conv(GELU(GroupNorm(x)))`` of the stem and the downsampling) save only their input and
  recompute the cheap element-wise / depthwise part in backward: the GELU input, the GELU output
  and the normalized map are never stored (design §4, "Memory"). On large maps the FFN tail
  runs per image in bands of rows (:func:`ffn_bands`), forward and backward, so its
  ``(rows*W, 4C)`` temporaries stay in cache (design §4, "FFN in bands of rows"); the conv links
  run one image at a time on large batches;
* :func:`conv_memory_format`: the convs of the stem and the downsamplings run channels-last (in
  inference too, at sizes the official code cannot run), but the stem's in NCHW on CPUs without
  AVX-512.

Inference (autograd off):

* :func:`inference_cache`: what depends only on parameters and sizes is kept on the module (not
  registered: the state dict is unchanged): the concatenated weights of :func:`project`, the
  position table resized to the input's grid;
* :func:`project`: one GEMM for the projections that read the same tokens;
* :func:`attention` (self-guided and standard blocks): the compiled CPU kernel
  ``mmsgformer::dot_product_attention`` where a vector kernel of it applies (float32, head
  dimension 32, AVX-512 or AVX2; design §18), else ``F.scaled_dot_product_attention`` as on
  the plain path;
* the coarse branch on large inputs (:func:`attention_and_key_mass`): in query chunks, or in
  float32 from the op ``mmsgformer::dot_product_attention_key_mass`` (design §18);
* :func:`image_chunks`: the stem a few images at a time, so the per-chunk temporaries stay in
  cache; :func:`ffn_inference`: the whole FFN of large maps (``fc1`` included) in the bands of
  rows of training;
* :func:`norm_act_inplace`: the GroupNorm and GELU of channels-last conv outputs (stem and
  downsamplings at sizes the official code cannot run) computed in the map itself;
  :func:`stem_inference`: there, the stem one image at a time, its middle conv in bands of rows
  written back into the map it reads (no map of its own).

The pieces (bands of rows, query chunks sized for the caches, image by image) are for the CPU
(:func:`split_for_cache`): on a GPU each one is a few kernel launches, so the same functions
work on the whole tensor there (the recomputation in backward stays).

Under ``torch.compile`` the recomputing autograd functions give way to the plain path (the
compiler plans its own recomputation), and so does the banded FFN under any tracing or export;
the attention fast path stays.
"""
import contextlib
import functools
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .common import add_fresh, is_symbolic, map_to_tokens, tokens_to_map

T = TypeVar('T')


def is_compiling() -> bool:
    """True while ``torch.compile`` traces (``torch.compiler.is_compiling`` on torch >= 2.3,
    ``torch._dynamo.is_compiling`` before)."""
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    try:
        import torch._dynamo as dynamo
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return dynamo.is_compiling()

# ---------------------------------------------------------------------------------- switch


def is_tracing() -> bool:
    """True while the model is compiled, traced or exported: size-keyed caches of tensors must
    not be filled then (they would hold fake or traced tensors for later eager runs)."""
    onnx = getattr(torch, 'onnx', None)
    in_export = onnx is not None and getattr(onnx, 'is_in_onnx_export', lambda: False)()
    return is_compiling() or torch.jit.is_tracing() or in_export


def use_fast_path(module: nn.Module) -> bool:
    """Whether ``module`` takes its fast path (``module.fast_path``, default True)."""
    return getattr(module, 'fast_path', True)


def split_for_cache(t: torch.Tensor) -> bool:
    """Whether the fast paths split work on ``t`` into pieces: bands of rows, query chunks of
    the key-mass pass sized for the caches, one image at a time. On the CPU the pieces keep
    their temporaries in cache and let the allocator reuse them. On a GPU every piece is a few
    kernel launches of its own (at 800x1344 thousands per step: SG-Former-S training ran at a
    ninth of Swin-T's speed on an H200), so there the work runs as one piece, and the key-mass
    pass in chunks of ``_CHUNK_ELEMS_DEVICE`` probabilities (design §4, "Pieces are for the
    CPU")."""
    return t.device.type == 'cpu'


def _recompute_allowed(module: nn.Module, *tensors: torch.Tensor) -> bool:
    """Recomputing autograd functions: only when a gradient is needed, not under compile."""
    return (use_fast_path(module) and torch.is_grad_enabled()
            and any(t.requires_grad for t in tensors) and not is_compiling())


def inference_cache(module: nn.Module, name: object, key: tuple,
                    params: Sequence[torch.Tensor], compute: Callable[[], T]) -> T:
    """``compute()``, kept on ``module`` under ``name`` in inference and returned again while
    ``key`` and ``params`` stay the same (a parameter replaced or modified in place, or another
    ``key``, recomputes it; one entry per ``name``). Computed afresh, nothing kept, while
    autograd records, on the plain path and while tracing (no traced tensor may outlive its
    graph)."""
    if not use_fast_path(module) or is_tracing() or torch.is_grad_enabled():
        return compute()
    state = (key, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
    cache = module.__dict__.setdefault('_inference_cache', {})
    entry = cache.get(name)
    if entry is None or entry[0] != state:
        entry = cache[name] = (state, compute())
    return entry[1]


# ---------------------------------------------------------------------------------- projections

# GEMMs narrower than this are left unfused: MKL runs them with other kernels whose float32
# rounding differs from the wide GEMM (it would change the first, bitwise-official map of tiny
# archs); from this width on the fused GEMM gives each column bitwise the same value.
_MIN_FUSED_WIDTH = 16


def project(module: nn.Module, y: torch.Tensor,
            *groups: Sequence[str]) -> List[torch.Tensor]:
    """The ``nn.Linear`` children of ``module`` named in ``groups``, applied to ``y (B, N, C)``.

    Returns one tensor per group: the outputs of the group's layers side by side along the last
    axis. Plain path (and training): one GEMM per layer, a concatenation for groups of several
    layers. Fast path in inference: one GEMM for all of them with the concatenated weight and
    bias cached on ``module`` (rebuilt when a parameter is replaced or modified in place), each
    group's result a column view of one buffer. Training keeps separate outputs: a view saved
    for backward (the attention's queries, say) would keep the whole fused buffer alive.
    """
    layers = [[getattr(module, n) for n in group] for group in groups]
    flat = [m for group in layers for m in group]
    fusable = all(m.bias is not None and m.out_features >= _MIN_FUSED_WIDTH for m in flat)
    if not (use_fast_path(module) and fusable and len(flat) > 1) or torch.is_grad_enabled():
        outs = [[m(y) for m in group] for group in layers]
        return [o[0] if len(o) == 1 else torch.cat(o, dim=-1) for o in outs]
    weight, bias = inference_cache(
        module, tuple(n for group in groups for n in group), (),
        [p for m in flat for p in (m.weight, m.bias)],
        lambda: (torch.cat([m.weight for m in flat]), torch.cat([m.bias for m in flat])))
    out = F.linear(y, weight, bias)
    return list(out.split([sum(m.out_features for m in group) for group in layers], dim=-1))


# ---------------------------------------------------------------------------------- attention


def attention(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T) v`` of the self-guided and standard blocks: ``q (B, h, Nq, d)``,
    ``k, v (B, h, Nk, d)`` -> ``(B, h, Nq, d)``.

    The plain path is ``F.scaled_dot_product_attention``. The fast path, on the CPU in float32
    with ``d = 32`` and AVX-512 or AVX2, is the compiled op ``mmsgformer::dot_product_attention``
    (design §18; its forward and backward beat PyTorch's flash kernels at ``d = 32``): in
    inference, and in training when there are at least as many ``(b, h)`` pairs as threads.
    While compiling, tracing or exporting PyTorch's kernel runs.
    """
    if use_fast_path(module) and not is_tracing() and ops.vector_kernel_applies(q, k, v):
        return ops.dot_product_attention(q, k, v, scale, impl='op')
    return F.scaled_dot_product_attention(q, k, v, scale=scale)

# Inference: above this many score elements the coarse branch runs in query chunks (never at
# 224/448 with ordinary batches, so the official operation order is kept there). Training: the
# key-mass pass always runs in chunks of this many probabilities: 2 MiB in float32 on the CPU
# (in cache), 64 MiB on a GPU (a few chunks per call, and a transient of a few hundred MiB at
# most beside the activations: split_for_cache).
_CHUNK_INFERENCE_ABOVE = 1 << 24
_CHUNK_ELEMS = 1 << 19
_CHUNK_ELEMS_DEVICE = 1 << 24


def _chunks(Bt: int, g: int, Nq: int, Nk: int, budget: int = _CHUNK_ELEMS) -> Tuple[int, int]:
    """``(batch items, queries)`` per chunk so that one chunk of scores holds about ``budget``
    values: all queries of several items (windows), or query rows of all items (the coarse
    branch of a few images), or query rows of one item."""
    per_query = g * Nk
    if Bt * Nq * per_query <= budget:
        return Bt, Nq
    if Nq * per_query <= budget:
        return budget // (Nq * per_query), Nq
    if Bt * per_query <= budget:
        return Bt, budget // (Bt * per_query)
    return 1, max(1, budget // per_query)


def attention_and_key_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                           key_bias: Optional[torch.Tensor] = None,
                           query_mask: Optional[torch.Tensor] = None,
                           query_counts: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention output and the (detached) mean probability each key receives, fast path.

    Same contract as :func:`mmsgformer.models.attention.attention_and_key_mass` (the plain
    computation): ``q (Bt, g, Nq, d)``, ``k, v (Bt, g, Nk, d)``, ``key_bias`` broadcastable to
    ``(Bt, 1, 1, Nk)`` (``-inf`` on padded keys), ``query_mask (Bt, Nq)`` / ``query_counts
    (Bt, 1)`` to average over real queries only. Returns ``(o (Bt, g, Nq, d), mass (Bt, Nk))``.

    Without a mask (the coarse branch), where the attention ops' vector kernels apply (float32,
    see :func:`attention`): both from ``mmsgformer::dot_product_attention_key_mass`` (design
    §18; its backward keeps the log-sum-exp, not the probabilities). Otherwise, with autograd:
    the output from ``F.scaled_dot_product_attention`` (the same holds) and the mass from a
    no-grad pass in query chunks; without autograd: output and mass from the same chunked pass.

    Each chunk costs one score GEMM, the softmax, (inference) the value GEMM and one reduction
    over heads and queries: the scale is applied to the queries (``Nq*d`` values, not
    ``Nq*Nk``), and the mean over heads and then over queries becomes one sum divided once by
    ``g * Nq`` (float rounding differs from the plain path's order in the last bits only).
    """
    from .attention import attention_and_key_mass as plain
    Bt, g, Nq, _ = q.shape
    Nk = k.shape[2]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not needs_grad and Bt * g * Nq * Nk <= _CHUNK_INFERENCE_ABOVE:
        return plain(q, k, v, scale, key_bias, query_mask, query_counts)
    if (key_bias is None and query_mask is None and not is_tracing()
            and ops.vector_kernel_applies(q, k, v)):
        return ops.dot_product_attention_key_mass(q, k, v, scale)  # the coarse branch
    out = None
    if needs_grad:
        mask = None if key_bias is None else key_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    with torch.no_grad():
        q_scaled, kt = q * scale, k.transpose(-2, -1)
        items, rows = _chunks(Bt, g, Nq, Nk,
                              _CHUNK_ELEMS if split_for_cache(q) else _CHUNK_ELEMS_DEVICE)
        mass = q.new_zeros(Bt, Nk)
        if out is None:
            out = torch.empty_like(q)
        for b in range(0, Bt, items):
            bs = slice(b, b + items)
            bias = None
            if key_bias is not None:
                bias = key_bias if key_bias.shape[0] == 1 else key_bias[bs]
            for s in range(0, Nq, rows):
                qs = slice(s, s + rows)
                a = q_scaled[bs, :, qs] @ kt[bs]
                if bias is not None:
                    a += bias
                a = a.softmax(dim=-1)
                if not needs_grad:  # (no out=: the FLOP counter's matmul handle needs 2 inputs)
                    out[bs, :, qs] = a @ v[bs]
                if query_mask is not None:
                    a.mul_(query_mask[bs, None, qs, None])
                mass[bs] += a.sum((1, 2))
        counts = Nq if query_counts is None else query_counts
        mass = mass / (counts * g)
    return out, mass


# ---------------------------------------------------------------------------------- FFN


def _has_autocast(device_type: str) -> bool:
    """Whether autocast exists for this device type (not for ``meta``; torch < 2.4 does not
    say, and is taken to have it)."""
    available = getattr(torch.amp, 'is_autocast_available', None)  # torch >= 2.4
    return available is None or available(device_type)


def _autocast_on(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (the convs would return its dtype)."""
    if not _has_autocast(device.type):
        return False
    try:
        return torch.is_autocast_enabled(device.type)  # torch >= 2.4
    except TypeError:
        if device.type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def _no_autocast(t: torch.Tensor):
    """A context without autocast on ``t``'s device: the recomputing functions below handle
    dtypes themselves, identically in forward and in the recomputation of backward. (Devices
    without autocast, such as ``meta``, need no context.)"""
    if not _has_autocast(t.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=t.device.type, enabled=False)


def _reduced(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


# The FFN tail runs one image at a time, in bands of rows, once an image has _MLP_SPLIT_ELEMS
# hidden values: each band's (rows*W, 4C) temporaries stay in cache and are reused by the
# allocator, where whole-batch ones would be fresh pages (faulted in on every use) and a trip
# to memory. Smaller maps (224 classification) run as one piece, as before.
_MLP_SPLIT_ELEMS = 1 << 19  # hidden values per image from which the FFN runs in bands
_BAND_ELEMS = 1 << 20  # hidden values per band (4 MiB in float32)


def ffn_bands(batch: int, H: int, W: int, hidden: int,
              split: bool = True) -> List[Tuple[slice, int, int]]:
    """How the FFN tail splits its work: pieces ``(images, r0, r1)``, each computing output rows
    ``[r0, r1)`` of ``images``. One piece for the whole batch when an image has fewer than
    ``_MLP_SPLIT_ELEMS`` hidden values or ``split`` is false (a GPU: :func:`split_for_cache`);
    else every image in bands of equal height holding about ``_BAND_ELEMS`` hidden values (at
    least one row)."""
    if not split or H * W * hidden < _MLP_SPLIT_ELEMS:
        return [(slice(0, batch), 0, H)]
    bands = -(-H // max(1, _BAND_ELEMS // (W * hidden)))
    rows = -(-H // bands)
    return [(slice(i, i + 1), r, min(r + rows, H))
            for i in range(batch) for r in range(0, H, rows)]


def _band_input(zmap: torch.Tensor, r0: int, r1: int) -> Tuple[torch.Tensor, int, int]:
    """What the 3x3 conv reads for output rows ``[r0, r1)`` of ``zmap (b, C4, H, W)``.

    Returns ``(x, pad, top)``: ``conv2d(x, padding=(pad, 1))`` gives exactly those rows, and row
    0 of ``x`` is row ``top`` of ``zmap`` (``-1``: the zero row above the image). The whole map
    and inner bands are views; a band at the top or bottom edge is a copy with one zero row.
    """
    H = zmap.shape[2]
    if r0 == 0 and r1 == H:
        return zmap, 1, 0
    top = r0 - 1
    if r0 > 0 and r1 < H:
        return zmap[:, :, top:r1 + 1], 0, top
    a, b = max(top, 0), min(r1 + 1, H)
    x = torch.empty((zmap.shape[0], zmap.shape[1], r1 - r0 + 2, zmap.shape[3]), dtype=zmap.dtype,
                    device=zmap.device, memory_format=torch.channels_last)
    x[:, :, a - top:b - top] = zmap[:, :, a:b]
    if a > top:
        x[:, :, 0].zero_()
    if b < r1 + 1:
        x[:, :, -1].zero_()
    return x, 0, top


def _gelu_input(x: torch.Tensor, pad: int, z_rows: torch.Tensor, dw_weight: torch.Tensor,
                dw_bias: torch.Tensor) -> torch.Tensor:
    """``z + dwconv(z)`` of one piece: ``x, pad`` from :func:`_band_input`, ``z_rows (b, n, C4)``
    the piece's own tokens. Added in place into the conv output when autograd is off."""
    conv = F.conv2d(x, dw_weight, dw_bias, 1, (pad, 1), 1, z_rows.shape[-1])
    return add_fresh(map_to_tokens(conv), z_rows)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, in place on ``x`` (a temporary) when autograd is off."""
    return F.gelu(x) if torch.is_grad_enabled() else torch.ops.aten.gelu_(x)


def _ffn_tail_forward(z: torch.Tensor, H: int, W: int, dw_weight: torch.Tensor,
                      dw_bias: torch.Tensor, fc2_weight: torch.Tensor,
                      fc2_bias: torch.Tensor) -> torch.Tensor:
    """``fc2(GELU(z + dwconv(z)))`` without autograd, piece by piece (:func:`ffn_bands`):
    ``z (B, H*W, C4) -> (B, H*W, C)``, all in ``z``'s dtype."""
    B, N, C4 = z.shape
    C = fc2_weight.shape[0]
    with torch.no_grad():
        zmap = tokens_to_map(z, H, W)
        out = z.new_empty(B, N, C)
        for images, r0, r1 in ffn_bands(B, H, W, C4, split_for_cache(z)):
            rows = slice(r0 * W, r1 * W)
            _tail_piece(zmap[images], r0, r1, z[images, rows], dw_weight, dw_bias, fc2_weight,
                        fc2_bias, out[images, rows].view(-1, C))
    return out


def _tail_piece(zmap: torch.Tensor, r0: int, r1: int, z_rows: torch.Tensor,
                dw_weight: torch.Tensor, dw_bias: torch.Tensor, fc2_weight: torch.Tensor,
                fc2_bias: torch.Tensor, out: torch.Tensor) -> None:
    """``fc2(GELU(z + dwconv(z)))`` of output rows ``[r0, r1)`` of ``zmap (b, C4, H', W)``
    (``z_rows (b, n, C4)`` those rows' tokens) written into ``out (b*n, C)``; no autograd."""
    x, pad, _ = _band_input(zmap, r0, r1)
    h = _gelu(_gelu_input(x, pad, z_rows, dw_weight, dw_bias))
    torch.addmm(fc2_bias, h.reshape(-1, h.shape[-1]), fc2_weight.t(), out=out)


class _FFNTail(torch.autograd.Function):
    """``fc2(GELU(z + dwconv(z)))`` saving ``z`` only; backward recomputes the GELU input and
    output (a depthwise conv and an element-wise op) instead of storing two ``(B, N, 4C)``
    tensors. Forward and backward go piece by piece (:func:`ffn_bands`). All tensors in
    ``z``'s dtype; ``(B, N, C4) -> (B, N, C)``."""

    @staticmethod
    def forward(ctx, z, H, W, dw_weight, dw_bias, fc2_weight, fc2_bias):
        with _no_autocast(z):
            out = _ffn_tail_forward(z, H, W, dw_weight, dw_bias, fc2_weight, fc2_bias)
        ctx.save_for_backward(z, dw_weight, dw_bias, fc2_weight)
        ctx.hw = (H, W)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # Written out instead of autograd over a recomputed graph, one piece at a time: the
        # piece's GELU input is rebuilt in its conv output and its gradient computed in place;
        # only grad_z is a whole (B, N, 4C) tensor. Each band writes its own rows of grad_z
        # (no zero-filled buffer: the fill would fault in every page a second time); its conv
        # input also holds the row above and the row below, whose gradients go into the band
        # above (already written) and, held as a one-row carry, into the band below.
        z, dw_weight, dw_bias, fc2_weight = ctx.saved_tensors
        need_z, _, _, need_dww, need_dwb, need_w2, need_b2 = ctx.needs_input_grad
        H, W = ctx.hw
        B, N, C4 = z.shape
        C = fc2_weight.shape[0]
        need_conv = need_z or need_dww or need_dwb
        pieces = ffn_bands(B, H, W, C4, split_for_cache(z))
        whole = len(pieces) == 1
        with torch.no_grad(), _no_autocast(z):
            grad_out = grad_out.to(z.dtype).reshape(B, N, C)
            grad_w2 = z.new_zeros(C, C4) if need_w2 else None
            grad_b2 = grad_out.sum((0, 1)) if need_b2 else None
            grad_dww = torch.zeros_like(dw_weight) if need_dww else None
            grad_dwb = torch.zeros_like(dw_bias) if need_dwb else None
            grad_z = None if whole or not need_z else torch.empty_like(z)
            carry = None  # the band above's input gradient at this band's first row
            zmap = tokens_to_map(z, H, W)
            for images, r0, r1 in pieces:
                rows = slice(r0 * W, r1 * W)
                x, pad, top = _band_input(zmap[images], r0, r1)
                u = _gelu_input(x, pad, z[images, rows], dw_weight, dw_bias)
                g = grad_out[images, rows].reshape(-1, C)
                if need_w2:
                    grad_w2.addmm_(g.t(), F.gelu(u).reshape(-1, C4))
                if not need_conv:
                    continue
                grad_u = (g @ fc2_weight).view_as(u)
                torch.ops.aten.gelu_backward.grad_input(grad_u, u, grad_input=grad_u)
                del u
                grad_x, gdw, gdb = torch.ops.aten.convolution_backward(
                    tokens_to_map(grad_u, r1 - r0, W), x, dw_weight, [C4], [1, 1], [pad, 1],
                    [1, 1], False, [0, 0], C4, [need_z, need_dww, need_dwb])
                if need_dww:
                    grad_dww += gdw
                if need_dwb:
                    grad_dwb += gdb
                if need_z and whole:
                    grad_z = map_to_tokens(grad_x).add_(grad_u)
                elif need_z:
                    carry = _write_band_grad(grad_z, H, W, images, r0, r1, top, grad_u,
                                             grad_x, carry)
        return grad_z, None, None, grad_dww, grad_dwb, grad_w2, grad_b2


def _write_band_grad(grad_z: torch.Tensor, H: int, W: int, images: slice, r0: int, r1: int,
                     top: int, grad_u: torch.Tensor, grad_x: torch.Tensor,
                     carry: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Write rows ``[r0, r1)`` of ``grad_z (B, H*W, C4)`` for one band of ``images``: its
    GELU-input gradient ``grad_u (b, n, C4)`` plus its conv-input gradient ``grad_x (b, C4,
    rows, W)`` (row 0 = row ``top`` of the map) over them, plus ``carry`` (the band above's
    gradient at row ``r0``). Adds ``grad_x``'s row ``r0 - 1`` into the band above and returns
    its row ``r1`` (``None`` at the image's last row) as the next band's carry."""
    own = grad_z[images, r0 * W:r1 * W]
    torch.add(grad_u, map_to_tokens(grad_x[:, :, r0 - top:r1 - top]), out=own)
    gz = tokens_to_map(grad_z, H, W)[images]
    if carry is not None:
        gz[:, :, r0] += carry
    if r0 > 0:
        gz[:, :, r0 - 1] += grad_x[:, :, r0 - 1 - top]
    return grad_x[:, :, r1 - top].clone() if r1 < H else None


def ffn_tail(mlp: nn.Module, z: torch.Tensor, H: int, W: int) -> Optional[torch.Tensor]:
    """Fast ``mlp.fc2(GELU(z + mlp.dwconv(z)))``, ``z (B, H*W, C4)`` the ``fc1`` output ->
    ``(B, H*W, C)``; ``None`` when the plain path applies (``fast_path`` off, ``torch.compile``,
    tracing, export, symbolic sizes).

    With a gradient: :class:`_FFNTail` (stores ``z`` only). Without: the same pieces, no
    autograd. Under autocast ``z`` has the autocast dtype and the weights are cast to it, as
    autocast would cast them for the conv and the GEMM.
    """
    if not _bands_allowed(mlp, H, W):
        return None
    params = _tail_weights(mlp, z.dtype)
    if torch.is_grad_enabled() and any(t.requires_grad for t in [z] + params):
        return _FFNTail.apply(z, H, W, *params)
    with _no_autocast(z):
        return _ffn_tail_forward(z, H, W, *params)


def ffn_inference(mlp: nn.Module, x: torch.Tensor, H: int, W: int) -> Optional[torch.Tensor]:
    """The whole FFN ``mlp.fc2(GELU(z + mlp.dwconv(z)))``, ``z = mlp.fc1(x)``, without autograd
    on maps that run in bands (:func:`ffn_bands`): ``x (B, H*W, C) -> (B, H*W, C)``.

    ``fc1`` runs band by band as well, so no ``(B, N, 4C)`` tensor is made: a band's conv reads
    its rows and the row above and below them; the two rows above come from the band before
    (each row of ``fc1`` is computed once). ``None`` when a gradient is needed, the map runs as
    one piece, or the plain path applies (``fast_path`` off, tracing, export, symbolic sizes).
    """
    if not _bands_allowed(mlp, H, W) or (torch.is_grad_enabled() and any(
            t.requires_grad for t in [x, *mlp.parameters()])):
        return None
    B, N, _ = x.shape
    pieces = ffn_bands(B, H, W, mlp.fc1.out_features, split_for_cache(x))
    if len(pieces) == 1:
        return None
    C = mlp.fc2.out_features
    out = z_above = None
    with torch.no_grad():
        for images, r0, r1 in pieces:
            a, b = max(r0 - 1, 0), min(r1 + 1, H)  # the rows the band's conv reads
            if r0 == 0:  # an image's first band
                z = mlp.fc1(x[images, a * W:b * W])  # under autocast: in the autocast dtype
            else:  # rows r0 - 1 and r0 from the band above
                z = torch.cat([z_above, mlp.fc1(x[images, (r0 + 1) * W:b * W])], dim=1)
            z_above = z[:, (r1 - 1 - a) * W:(r1 + 1 - a) * W]
            if out is None:  # z's dtype (autocast's, if on) is known from the first band
                weights = _tail_weights(mlp, z.dtype)
                out = z.new_empty(B, N, C)
            with _no_autocast(z):
                _tail_piece(tokens_to_map(z, b - a, W), r0 - a, r1 - a,
                            z[:, (r0 - a) * W:(r1 - a) * W], *weights,
                            out[images, r0 * W:r1 * W].view(-1, C))
    return out


def _bands_allowed(mlp: nn.Module, H: int, W: int) -> bool:
    """The banded FFN needs the fast path, concrete sizes and no tracing, compile or export
    (its Python loop over bands would be baked into the graph)."""
    return use_fast_path(mlp) and not is_tracing() and not is_symbolic(H, W)


def _tail_weights(mlp: nn.Module, dtype: torch.dtype) -> List[torch.Tensor]:
    """The FFN tail's ``[dwconv weight, dwconv bias, fc2 weight, fc2 bias]`` in ``dtype`` (that
    of ``z``: autocast's under autocast, as autocast would cast them for the conv and GEMM)."""
    conv, fc2 = mlp.dwconv.dwconv, mlp.fc2
    return [p.to(dtype) for p in (conv.weight, conv.bias, fc2.weight, fc2.bias)]


# ---------------------------------------------------------------------------------- convs


# The conv(GELU(GroupNorm(x))) links of training run one image at a time once the batch's map
# has this many values (32 MiB in float32, glibc's largest mmap threshold): the normalized map
# and the GroupNorm/GELU temporaries of forward and backward are then one image's, which the
# allocator can reuse, where whole-batch ones are fresh pages faulted in on every step (at
# 512x512, batch 4, the stem's are 67 MB each). Smaller batches (224 classification) are
# faster as one piece.
_NORM_ACT_SPLIT_ELEMS = 1 << 23


def _norm_act_images(x: torch.Tensor) -> List[slice]:
    """The batch slices :class:`_NormActConv` works on: every image alone for large maps on the
    CPU (:func:`split_for_cache`)."""
    B = x.shape[0]
    if B > 1 and x.numel() >= _NORM_ACT_SPLIT_ELEMS and split_for_cache(x):
        return [slice(i, i + 1) for i in range(B)]
    return [slice(0, B)]


class _NormActConv(torch.autograd.Function):
    """``conv(GELU(GroupNorm(1, C)(x)))`` saving ``x`` only; backward recomputes the normalized,
    activated map (the conv's input) and takes the conv's gradients from it. Large maps go one
    image at a time (:func:`_norm_act_images`), forward and backward.

    The GroupNorm and GELU run in float32 for float16/bfloat16 ``x`` (as under autocast), the
    conv in ``x``'s dtype (its weight is given in that dtype)."""

    @staticmethod
    def forward(ctx, x, gn_weight, gn_bias, eps, conv_weight, stride, padding, groups):
        pieces = _norm_act_images(x)
        with torch.no_grad(), _no_autocast(x):
            outs = [F.conv2d(_norm_act(x[p], gn_weight, gn_bias, eps), conv_weight, None,
                             stride, padding, 1, groups) for p in pieces]
        ctx.save_for_backward(x, gn_weight, gn_bias, conv_weight)
        ctx.args = (eps, stride, padding, groups)
        if len(outs) == 1:
            return outs[0]
        return torch.cat(outs).contiguous(memory_format=_layout_of(outs[0]))

    @staticmethod
    def backward(ctx, grad_out):
        x, gn_weight, gn_bias, conv_weight = ctx.saved_tensors
        eps, stride, padding, groups = ctx.args
        need_x, need_gw, need_gb, _, need_cw = ctx.needs_input_grad[:5]
        grad_out = grad_out.to(x.dtype)
        grad_x = torch.empty_like(x) if need_x else None
        grad_gw = grad_gb = grad_cw = None
        for p in _norm_act_images(x):
            gx, ggw, ggb, gcw = _norm_act_conv_backward(
                x[p], gn_weight, gn_bias, conv_weight, grad_out[p], eps, stride, padding, groups,
                (need_x, need_gw, need_gb, need_cw))
            if need_x:
                grad_x[p] = gx
            grad_gw = _accumulate(grad_gw, ggw)
            grad_gb = _accumulate(grad_gb, ggb)
            grad_cw = _accumulate(grad_cw, gcw)
        return grad_x, grad_gw, grad_gb, None, grad_cw, None, None, None


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


def _accumulate(total: Optional[torch.Tensor], part: Optional[torch.Tensor]
                ) -> Optional[torch.Tensor]:
    return part if total is None or part is None else total.add_(part)


def _norm_act_conv_backward(x, gn_weight, gn_bias, conv_weight, grad_out, eps, stride, padding,
                            groups, needs):
    """Gradients ``(x, GroupNorm weight, GroupNorm bias, conv weight)`` of
    ``conv(GELU(GroupNorm(x)))`` for one piece of the batch (``None`` where not in ``needs``):
    the conv input recomputed with autograd, the conv's gradients from ``convolution_backward``,
    the rest by autograd over the recomputed GroupNorm and GELU."""
    need_x, need_gw, need_gb, need_cw = needs
    with torch.enable_grad(), _no_autocast(x):
        leaves = [t.detach().requires_grad_(n) for t, n in
                  ((x, need_x), (gn_weight, need_gw), (gn_bias, need_gb))]
        a = _norm_act(leaves[0], leaves[1], leaves[2], eps)
    need_a = any(t.requires_grad for t in leaves)
    grad_a, grad_cw, _ = torch.ops.aten.convolution_backward(
        grad_out, a.detach(), conv_weight, None, [stride] * 2, [padding] * 2,
        [1, 1], False, [0, 0], groups, [need_a, need_cw, False])
    grads = [None, None, None]
    wanted = [t for t in leaves if t.requires_grad]
    if wanted:
        got = iter(torch.autograd.grad(a, wanted, grad_a))
        grads = [next(got) if t.requires_grad else None for t in leaves]
    return grads[0], grads[1], grads[2], grad_cw if need_cw else None


def _norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              eps: float) -> torch.Tensor:
    """``GELU(GroupNorm(1, C)(x))`` in float32 for reduced-precision ``x``, cast back."""
    if _reduced(x.dtype):
        a = _gelu(F.group_norm(x.float(), 1, weight.float(), bias.float(), eps))
        return a.to(x.dtype)
    return _gelu(F.group_norm(x, 1, weight, bias, eps))


def norm_act_conv(norm: nn.GroupNorm, conv: nn.Conv2d, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Fast ``conv(GELU(norm(x)))`` for training (``norm`` a ``GroupNorm(1, C)``, ``conv``
    bias-free, square stride/padding, dilation 1), or ``None`` when the plain path applies."""
    if not _recompute_allowed(conv, x, conv.weight):
        return None
    return _NormActConv.apply(x, norm.weight, norm.bias, norm.eps, conv.weight.to(x.dtype),
                              conv.stride[0], conv.padding[0], conv.groups)


def norm_act_inplace(norm: nn.GroupNorm, x: torch.Tensor, act: bool) -> Optional[torch.Tensor]:
    """``GELU(norm(x))`` (``norm(x)`` when ``act`` is false) computed in ``x`` itself, a conv
    output ``(B, C, H, W)`` in channels-last layout, when no gradient is needed (inference, a
    frozen stage), on the CPU; ``None`` otherwise (plain path, a gradient, tracing, reduced
    precision, NCHW maps, ``norm`` not an affine ``GroupNorm(1, C)``, a GPU: its statistics go
    image by image, :func:`split_for_cache`).

    The plain modules allocate a fresh map for the GroupNorm output: at 800x1344 the stem's
    64-channel maps are 68 MB, which glibc maps fresh from the kernel on every call (above its
    32 MB ``mmap`` threshold) and the first write faults in page by page. Here each image's mean
    and variance come from one sum and one dot product over its values (the sum-of-squares form
    of PyTorch's channels-last GroupNorm kernel), the affine map is applied in place, then the
    GELU. Channels-last maps in inference are those of sizes the official code cannot run
    (:func:`conv_memory_format`); at the official sizes the GroupNorm kernel's float32 rounding
    is kept.
    """
    if not _norm_in_place_allowed(norm, x):
        return None
    B, C = x.shape[:2]
    values = x.permute(0, 2, 3, 1).reshape(B, -1)  # a view: each image's values in a row
    n = values.shape[1]
    with torch.no_grad():
        sums = torch.stack([v.sum() for v in values])
        squares = torch.stack([torch.dot(v, v) for v in values])
        mean = sums / n
        rstd = (squares / n - mean * mean).clamp_min_(0).add_(norm.eps).rsqrt_()
        scale = norm.weight.to(x.dtype)[None] * rstd[:, None]  # (B, C)
        shift = norm.bias.to(x.dtype)[None] - mean[:, None] * scale
        torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None], out=x)
        if act:
            torch.ops.aten.gelu_(x)
    return x


def _norm_in_place_allowed(norm: nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether :func:`norm_act_inplace` computes ``norm(x)`` in ``x`` (see there)."""
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, norm.weight, norm.bias))
    return (use_fast_path(norm) and not needs_grad and not is_tracing() and split_for_cache(x)
            and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
            and norm.num_groups == 1 and norm.affine and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


# The stem's middle conv runs in bands of about this many output values (8 MiB in float32).
_STEM_BAND_ELEMS = 1 << 21


def stem_inference(units: Sequence[nn.Module], x: torch.Tensor) -> Optional[torch.Tensor]:
    """The stem's chain ``GN2(c2(GELU(GN1(c1(GELU(GN0(c0(x))))))))`` without autograd, one
    image at a time, the middle conv written into the map it reads: ``units`` the three
    conv+GroupNorm units (``unit.c``, ``unit.bn``), ``x (B, 3, Hi, Wi)`` channels-last ->
    ``(B, C, H, W)`` channels-last. ``None`` where :func:`norm_act_inplace` does not apply
    (a gradient, NCHW maps: the official sizes, the plain path, tracing, reduced precision,
    autocast, a GPU) or
    the units are not the stem's (``c0`` 3x3 stride 2 padding 1, ``c1`` 3x3 stride 1 padding 1).

    ``c0`` runs with padding 3 on the top and bottom: two extra output rows, so its output
    ``buf (1, C, H0 + 2, W0)`` holds the map in rows ``1..H0``. After its GroupNorm and GELU
    (in place, statistics over those rows only) rows 0 and ``H0 + 1`` are zeroed: the zero
    padding of ``c1``. Band ``[r0, r1)`` of ``c1``'s output reads rows ``[r0, r1 + 2)`` of
    ``buf`` and is copied into rows ``[r0, r1)``, which no later band reads. ``c1``'s output
    thus needs no map of its own (at 800x1344 it is 68 MB: above glibc's mmap threshold, a
    fresh map is faulted in page by page on every call) and its temporaries stay in cache.
    """
    c0, c1 = units[0].c, units[1].c
    shapes_ok = (c0.kernel_size == (3, 3) and c0.stride == (2, 2) and c0.padding == (1, 1)
                 and c1.kernel_size == (3, 3) and c1.stride == (1, 1) and c1.padding == (1, 1)
                 and c0.dilation == c1.dilation == (1, 1) and c0.groups == c1.groups == 1)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for u in units for p in u.parameters()))
    if needs_grad or not shapes_ok or _autocast_on(x.device) or not all(
            _norm_in_place_allowed(u.bn, x[:1]) for u in units):
        return None
    outs = []
    with torch.no_grad():
        for image in x.split(1):
            # (oneDNN picks NCHW for some strides of a size-1 batch: the layout is made sure of)
            buf = F.conv2d(image, c0.weight, c0.bias, 2, (3, 1)).contiguous(
                memory_format=torch.channels_last)
            H0 = buf.shape[2] - 2
            _norm_act_into(units[0].bn, buf[:, :, 1:H0 + 1], act=True)
            buf[:, :, 0].zero_()
            buf[:, :, H0 + 1].zero_()
            rows = max(1, _STEM_BAND_ELEMS // (buf.shape[1] * buf.shape[3]))
            for r0 in range(0, H0, rows):
                r1 = min(r0 + rows, H0)
                buf[:, :, r0:r1] = F.conv2d(buf[:, :, r0:r1 + 2], c1.weight, c1.bias, 1, (0, 1))
            out = units[2].c(_norm_act_into(units[1].bn, buf[:, :, :H0], act=True))
            outs.append(_norm_act_into(units[2].bn, out, act=False))
    return outs[0] if len(outs) == 1 else torch.cat(outs).contiguous(
        memory_format=torch.channels_last)


def _norm_act_into(norm: nn.GroupNorm, x: torch.Tensor, act: bool) -> torch.Tensor:
    """``GELU(norm(x))`` (``norm(x)`` without ``act``) written into ``x``: by
    :func:`norm_act_inplace`, or for maps it leaves alone (a 1x1 map is NCHW-contiguous too)
    by the module and a copy. No autograd."""
    if norm_act_inplace(norm, x, act) is None:
        y = norm(x)
        x.copy_(F.gelu(y) if act else y)
    return x


# ---------------------------------------------------------------------------------- layout


# The official code runs where every stage's grid is a multiple of the 7x7 window: inputs whose
# sides are multiples of 224. The maps a downsampling reads then have sides that are multiples of
# 56, 28 and 14 (stages 1-3); 14 marks them all.
STEM_OFFICIAL_MULTIPLE = 224
DOWNSAMPLE_OFFICIAL_MULTIPLE = 14


def conv_memory_format(module: nn.Module, x: torch.Tensor, official_multiple: int,
                       dense: bool = False) -> torch.memory_format:
    """The layout the convs of ``module`` (the stem or a downsampling) run in for ``x (B, C, H,
    W)``, the images or the map they read; ``dense``: the convs are dense 3x3 ones (the stem),
    not 1x1 and depthwise (a downsampling).

    Channels-last in training (the tokens after the convs are then a view; oneDNN's backward of
    the 1x1 and depthwise convs is 2-3x faster there, and of the dense 3x3 ones on CPUs with
    AVX-512), except the dense convs on a CPU without AVX-512, whose channels-last backward is
    about 1.8x slower than NCHW's there (:func:`_dense_convs_channels_last_in_training`); and
    in inference at sizes the official code cannot run, where ``H`` or ``W`` is not a multiple
    of ``official_multiple`` (the forward is 1.4-1.7x faster). At the official sizes and on the
    plain path: the official contiguous NCHW, whose float32 rounding keeps the significance maps
    bitwise the official ones (channels-last convs round differently, which flips near-ties of
    a ranking)."""
    if _recompute_allowed(module, *module.parameters()):
        if dense and x.device.type == 'cpu' and not _dense_convs_channels_last_in_training():
            return torch.contiguous_format
        return torch.channels_last
    H, W = x.shape[-2:]
    if (use_fast_path(module) and not is_tracing() and not is_symbolic(H, W)
            and (H % official_multiple or W % official_multiple)):
        return torch.channels_last
    return torch.contiguous_format


@functools.lru_cache(maxsize=None)
def _dense_convs_channels_last_in_training() -> bool:
    """Whether oneDNN's channels-last backward of the stem's 64-channel 3x3 convs is the faster
    one on this CPU: with AVX-512 (2-3x faster than NCHW, Intel Xeon), not with AVX2 only (AMD
    EPYC, 2 threads, SG-Former-S stem fwd+bwd at 512x512 B=4: 2.21 s channels-last, 1.39 s
    NCHW; 800x1344 B=2: 6.09 / 5.49 s)."""
    get = getattr(torch.backends.cpu, 'get_cpu_capability', None)
    return get is None or get().startswith('AVX512')


# ---------------------------------------------------------------------------------- inference

# Inference on a batch runs the stem a few images at a time: the per-chunk intermediates stay
# in cache and the allocator reuses them instead of faulting in fresh pages for every (B, ...)
# temporary (the FFN goes further: ffn_inference). Convs and GroupNorm are independent per
# image; with the installed oneDNN the chunked results are bitwise those of the batched call.
_IMAGES_PER_CHUNK = 4  # 1 or 2 save little more CPU time but add many small ops


def image_chunks(module: nn.Module, x: torch.Tensor) -> Optional[List[torch.Tensor]]:
    """``x (B, ...)`` as chunks of ``_IMAGES_PER_CHUNK`` images in inference when ``B`` exceeds
    the chunk size on the CPU (:func:`split_for_cache`); ``None`` otherwise (run the batch as a
    whole)."""
    if (not use_fast_path(module) or torch.is_grad_enabled() or x.shape[0] <= _IMAGES_PER_CHUNK
            or not split_for_cache(x)):
        return None
    return list(x.split(_IMAGES_PER_CHUNK))


__all__ = ['use_fast_path', 'inference_cache', 'project', 'attention_and_key_mass', 'ffn_bands',
           'ffn_tail', 'ffn_inference', 'norm_act_conv', 'norm_act_inplace', 'stem_inference',
           'conv_memory_format', 'image_chunks']
