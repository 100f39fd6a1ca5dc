"""The op's tests on every device: ``cpu`` always, ``cuda`` where a GPU is visible.

Each test takes a ``device`` parameter. Without a GPU the ``cuda`` cases are skipped, and so are
the CPU cases that ``test_op.py`` already covers unless ``MMSGFORMER_ALL_DEVICES=1``; with a GPU
and a build without the CUDA kernel the ``cuda`` cases fail, on purpose. ``tools/gpu_check.py``
runs this file on a GPU machine with every case, and a subset of it under ``compute-sanitizer
--tool memcheck`` (the tests whose names contain ``memcheck_subset``).

Checked per device: equality with the float64 pure-PyTorch reference at the official and at
detection token counts, every token count 1..40 (empty segments, short groups), float64
gradcheck, ``torch.library.opcheck``, bad inputs, float16/bfloat16, non-contiguous inputs,
determinism of the backward, ``torch.compile(fullgraph=True)`` (inductor on CUDA, aot_eager on
the CPU). CUDA only: agreement with the CPU kernel, device mixes, the in-kernel bounds check,
and the grid-stride loops of both kernels (inputs larger than one launch grid).
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmsgformer.ops import (debug_enabled, op_available, segment_layout, set_debug, sg_aggregate,
                            sg_aggregate_reference)

REPO = Path(__file__).resolve().parents[1]
BUILT = op_available()
OP = torch.ops.mmsgformer
HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason='no CUDA device visible')
# CPU cases whose counterpart is in test_op.py run only with MMSGFORMER_ALL_DEVICES=1 (set by
# tools/gpu_check.py), which keeps this file cheap in the CPU suite.
ALL_DEVICES = os.environ.get('MMSGFORMER_ALL_DEVICES', '0') == '1'
_CUDA = pytest.param('cuda', marks=cuda_only)
DEVICES = [pytest.param('cpu', marks=pytest.mark.skipif(
    not ALL_DEVICES, reason='CPU case covered by test_op.py (MMSGFORMER_ALL_DEVICES=1 runs it)')),
    _CUDA]
NEW_DEVICES = ['cpu', _CUDA]  # tests with no counterpart in test_op.py

OFFICIAL = [(3136, 8), (784, 4), (196, 2)]
DETECTION = [(200 * 334, 8), (100 * 167, 4), (50 * 84, 2), (84 * 130, 8), (42 * 65, 4),
             (21 * 33, 2)]

# The forward kernel launches at most 2**20 blocks of 256 threads (one thread per output
# element); the backward one warp (32 threads) per rank. Beyond that, grid-stride loops run.
FORWARD_GRID_ELEMENTS = (1 << 20) * 256
BACKWARD_GRID_RANKS = (1 << 20) * 256 // 32


def make_inputs(B, N, C, r, device, dtype=torch.float64, seed=0, requires_grad=False):
    """Tokens ~ N(0, 1), a random ranking and f_k weights/biases (nn.Linear init) on ``device``.

    Drawn on the CPU with a seeded generator, so every device gets the same values.
    """
    gen = torch.Generator().manual_seed(seed)
    layout = segment_layout(N, r)
    x = torch.randn(B, N, C, generator=gen, dtype=dtype)
    order = torch.argsort(torch.rand(B, N, generator=gen), dim=1)
    w = torch.cat([(torch.rand(g, generator=gen, dtype=dtype) * 2 - 1) / math.sqrt(g)
                   for g in layout.group_sizes])
    b = (torch.rand(layout.num_segments, generator=gen, dtype=dtype) * 2 - 1) * 0.1
    x, order, w, b = (t.to(device) for t in (x, order, w, b))
    if requires_grad:
        for t in (x, w, b):
            t.requires_grad_()
    return layout, x, order, w, b


def layout_args(layout):
    return list(layout.starts), list(layout.lengths), list(layout.group_sizes)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def test_op_built():
    assert BUILT, 'the C++ extension mmsgformer._C is not built'


@cuda_only
def test_cuda_kernel_registered():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for name in ('mmsgformer::sg_aggregate', 'mmsgformer::sg_aggregate_backward'):
        assert has(name, 'CUDA'), (
            f'{name} has no CUDA kernel: rebuild with FORCE_CUDA=1 '
            f'(python setup.py build_ext --inplace, or tools/gpu_check.py)')


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('N,r', OFFICIAL + DETECTION)
def test_forward_matches_reference(device, N, r):
    layout, x, order, w, b = make_inputs(2, N, 16, r, device, seed=N + r)
    ref = sg_aggregate_reference(x, order, w, b, layout)
    out = sg_aggregate(x, order, w, b, layout, impl='op')
    assert out.device.type == device and out.shape == ref.shape == (2, layout.num_out, 16)
    assert max_err(out, ref) <= 1e-12
    out32 = sg_aggregate(x.float(), order, w.float(), b.float(), layout, impl='op')
    assert out32.dtype == torch.float32
    assert max_err(out32, ref) <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('r', [8, 4, 2])
def test_memcheck_subset_small_counts(device, r):
    """Every N from 1 to 40 (empty segments, short groups, single tokens) and a few above 784."""
    for N in list(range(1, 41)) + [785, 799, 1000]:
        layout, x, order, w, b = make_inputs(2, N, 3, r, device, seed=N, requires_grad=True)
        out = sg_aggregate(x, order, w, b, layout, impl='op')
        g = torch.randn(out.shape, dtype=out.dtype,
                        generator=torch.Generator().manual_seed(N)).to(device)
        grads = torch.autograd.grad(out, (x, w, b), g)
        ref = sg_aggregate_reference(x, order, w, b, layout)
        ref_grads = torch.autograd.grad(ref, (x, w, b), g)
        assert max_err(out, ref) <= 1e-12, N
        for got, exp in zip(grads, ref_grads):
            assert got.device.type == device
            assert max_err(got, exp) <= 1e-12, N


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('N,r', OFFICIAL + [(200 * 334, 8), (100 * 167, 4), (21 * 33, 2)])
def test_backward_matches_reference(device, N, r):
    layout, x, order, w, b = make_inputs(2, N, 8, r, device, seed=3 * N, requires_grad=True)
    g = torch.randn(2, layout.num_out, 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1)).to(device)
    grads = torch.autograd.grad(sg_aggregate(x, order, w, b, layout, impl='op'), (x, w, b), g)
    ref = torch.autograd.grad(sg_aggregate_reference(x, order, w, b, layout), (x, w, b), g)
    for got, exp in zip(grads, ref):
        assert got.shape == exp.shape and got.dtype == exp.dtype and got.device == exp.device
        assert max_err(got, exp) <= 1e-12 * max(1.0, exp.abs().max().item())
    # every token row gets a gradient (weight of its slot times its group's output gradient)
    assert torch.count_nonzero(grads[0].abs().sum(-1)).item() == 2 * N


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('N,r', [(7, 2), (37, 4), (61, 8), (23, 8)])
def test_memcheck_subset_gradcheck(device, N, r):
    layout, x, order, w, b = make_inputs(2, N, 2, r, device, seed=N, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: OP.sg_aggregate(x_, order, w_, b_, *layout_args(layout)), (x, w, b))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('N,r', [(3136, 8), (50 * 84, 2)])
def test_gradcheck_fast_mode_large(device, N, r):
    layout, x, order, w, b = make_inputs(1, N, 2, r, device, seed=N, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: OP.sg_aggregate(x_, order, w_, b_, *layout_args(layout)),
        (x, w, b), fast_mode=True)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('B,N,C,r,dtype,grad', [(2, 61, 3, 8, torch.float64, True),
                                                (2, 196, 4, 2, torch.float32, True),
                                                (1, 784, 2, 4, torch.float16, False),
                                                (3, 23, 5, 4, torch.float64, True)])
def test_opcheck(device, B, N, C, r, dtype, grad):
    layout, x, order, w, b = make_inputs(B, N, C, r, device, dtype=dtype, seed=N,
                                         requires_grad=grad)
    torch.library.opcheck(OP.sg_aggregate, (x, order, w, b, *layout_args(layout)))
    g = torch.randn(B, layout.num_out, C, dtype=dtype, device=device)
    torch.library.opcheck(OP.sg_aggregate_backward,
                          (g, x.detach(), order, w.detach(), *layout_args(layout)))


@pytest.mark.parametrize('device', NEW_DEVICES)
def test_bad_inputs(device):
    layout, x, order, w, b = make_inputs(2, 196, 4, 2, device, dtype=torch.float32)
    st, ln, gs = layout_args(layout)
    cases = [
        ((x[0], order, w, b, st, ln, gs), r'tokens must be \(B, N, C\)'),
        ((x.long(), order, w, b, st, ln, gs), 'tokens dtype must be'),
        ((x, order[:, :-1], w, b, st, ln, gs), r'order must be \(B, N\)'),
        ((x, order.int(), w, b, st, ln, gs), 'order must be int64'),
        ((x, order, w.double(), b.double(), st, ln, gs),
         'weight dtype .* does not match tokens dtype'),
        ((x, order, w[:-1], b, st, ln, gs),
         r'weight has 2 elements but must have sum\(group_sizes\) = 3'),
        ((x, order, w, b[:1], st, ln, gs), r'bias must have shape \(2,\)'),
        ((x, order, w, b, st, [98, 97], gs), 'the layout covers 195 ranks'),
        ((x, order, w, b, [0, 99], [98, 98], gs), r'seg_starts\[1\]=99 must be 98'),
        ((x, order, w, b, st, ln, [2, 0]), r'group_sizes\[1\]=0 must be >= 1'),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            OP.sg_aggregate(*args)
    g = torch.zeros(2, layout.num_out, 4, device=device)
    with pytest.raises(ValueError, match=r'grad_out must be \(B, num_out, C\) = \(2, 147, 4\)'):
        OP.sg_aggregate_backward(g[:, 1:], x, order, w, st, ln, gs)
    with pytest.raises(ValueError, match='grad_out dtype'):
        OP.sg_aggregate_backward(g.double(), x, order, w, st, ln, gs)


@pytest.mark.parametrize('device', DEVICES)
def test_debug_mode_rejects_non_permutation(device):
    layout, x, order, w, b = make_inputs(2, 196, 4, 2, device)
    dup = order.clone()
    dup[1, 3] = dup[1, 4]
    previous = debug_enabled()
    set_debug(True)
    try:
        with pytest.raises(ValueError, match='order is not a permutation'):
            sg_aggregate(x, dup, w, b, layout, impl='op')
        assert sg_aggregate(x, order, w, b, layout, impl='op').shape == (2, 147, 4)
    finally:
        set_debug(previous)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype,w_dtype,tol', [(torch.float16, torch.float16, 2e-3),
                                               (torch.float16, torch.float32, 2e-3),
                                               (torch.bfloat16, torch.bfloat16, 2e-2),
                                               (torch.bfloat16, torch.float32, 2e-2)])
def test_memcheck_subset_reduced_precision(device, dtype, w_dtype, tol):
    layout, x, order, w, b = make_inputs(2, 784, 40, 4, device, seed=7)
    xr = x.to(dtype).requires_grad_()
    wr = w.to(w_dtype).requires_grad_()
    br = b.to(w_dtype).requires_grad_()
    out = sg_aggregate(xr, order, wr, br, layout, impl='op')
    assert out.dtype == dtype
    exact = sg_aggregate_reference(xr.double(), order, wr.double(), br.double(), layout)
    # float accumulation: the only error is the final rounding to the output dtype
    assert ((out.double() - exact).abs() / exact.abs().clamp_min(1)).max().item() <= tol
    gx, gw, gb = torch.autograd.grad(out.float().sum(), (xr, wr, br))
    assert (gx.dtype, gw.dtype, gb.dtype) == (dtype, w_dtype, w_dtype)
    ex = torch.autograd.grad(exact.sum(), (xr, wr, br))
    assert max_err(gx, ex[0]) <= tol
    assert ((gw.double() - ex[1].double()).abs() / ex[1].double().abs().clamp_min(1)).max() <= tol
    expected_gb = torch.tensor([n * 2 * 40 for n in layout.counts], dtype=torch.float64)
    assert torch.equal(gb.double().cpu(), expected_gb)


@pytest.mark.parametrize('device', NEW_DEVICES)
def test_memcheck_subset_non_contiguous(device):
    # C = 37: not a multiple of the CUDA warp, so the lanes' channel loop has a ragged end
    layout, x, order, w, b = make_inputs(2, 784, 37, 4, device, seed=5)
    expected = OP.sg_aggregate(x, order, w, b, *layout_args(layout))
    x_nc = x.transpose(0, 2).contiguous().transpose(0, 2)  # same values, channel-first storage
    order_nc = order.t().contiguous().t()
    w_nc = torch.stack([w, -w], dim=1)[:, 0]                   # stride 2
    b_nc = torch.stack([b, -b], dim=1)[:, 0]
    assert not (x_nc.is_contiguous() or order_nc.is_contiguous() or w_nc.is_contiguous())
    assert torch.equal(OP.sg_aggregate(x_nc, order_nc, w_nc, b_nc, *layout_args(layout)),
                       expected)
    x_nc.requires_grad_()
    grad = torch.autograd.grad(
        OP.sg_aggregate(x_nc, order_nc, w_nc, b_nc, *layout_args(layout)).sum(), x_nc)[0]
    ref = torch.autograd.grad(sg_aggregate_reference(x_nc, order, w, b, layout).sum(), x_nc)[0]
    assert max_err(grad, ref) <= 1e-12


@pytest.mark.parametrize('device', NEW_DEVICES)
def test_memcheck_subset_empty_inputs(device):
    """B = 0 or C = 0: empty outputs, zero weight gradients, no kernel reads anything."""
    for B, C in ((0, 4), (2, 0)):
        layout, x, order, w, b = make_inputs(B, 196, C, 2, device, requires_grad=True)
        out = sg_aggregate(x, order, w, b, layout, impl='op')
        assert out.shape == (B, layout.num_out, C)
        gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b))
        assert gx.shape == x.shape
        assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize('device', NEW_DEVICES)
def test_backward_is_deterministic(device):
    layout, x, order, w, b = make_inputs(4, 3136, 64, 8, device, dtype=torch.float32, seed=9,
                                         requires_grad=True)
    g = torch.randn(4, layout.num_out, 64, device=device)
    runs = [torch.autograd.grad(sg_aggregate(x, order, w, b, layout, impl='op'), (x, w, b), g)
            for _ in range(3)]
    for other in runs[1:]:
        for a, e in zip(runs[0], other):
            assert torch.equal(a, e)


@pytest.mark.parametrize('device', DEVICES)
def test_compile_fullgraph(device):
    """inductor on CUDA; aot_eager on the CPU (inductor there needs minutes of C++ compiling)."""
    backend = 'inductor' if device == 'cuda' else 'aot_eager'
    layout, x, order, w, b = make_inputs(2, 784, 8, 4, device, dtype=torch.float32, seed=11,
                                         requires_grad=True)

    def f(x_, order_, w_, b_):
        y = sg_aggregate(x_ * 2.0, order_, w_, b_, layout, impl='op')
        return torch.tanh(y).sum(dim=-1)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = compiled(x, order, w, b)
    exp = f(x, order, w, b)
    assert got.device.type == device
    assert torch.allclose(got, exp, atol=1e-5, rtol=0)
    for a, e in zip(torch.autograd.grad(got.sum(), (x, w, b)),
                    torch.autograd.grad(exp.sum(), (x, w, b))):
        assert torch.allclose(a, e, atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------ CUDA only

@cuda_only
@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                       (torch.bfloat16, 2.0 ** -7)])
def test_cuda_matches_cpu_kernel(dtype, tol):
    """Same inputs, both kernels: outputs and all three gradients agree.

    Both accumulate a group's (at most 16) products in the same order in float32 (float64 for
    float64); nvcc may fuse them into FMAs, so bfloat16 results may differ by one rounding step.
    """
    layout, x, order, w, b = make_inputs(3, 84 * 130, 24, 8, 'cpu', dtype=dtype, seed=4)
    g = torch.randn(3, layout.num_out, 24, generator=torch.Generator().manual_seed(2)).to(dtype)
    results = {}
    for device in ('cpu', 'cuda'):
        xs, ws, bs = (t.to(device).requires_grad_() for t in (x, w, b))
        out = OP.sg_aggregate(xs, order.to(device), ws, bs, *layout_args(layout))
        grads = torch.autograd.grad(out, (xs, ws, bs), g.to(device))
        results[device] = [t.cpu() for t in (out,) + grads]
    for name, got, exp in zip(('out', 'grad_x', 'grad_w', 'grad_b'), results['cuda'],
                              results['cpu']):
        if name in ('grad_w', 'grad_b') and dtype != torch.float64:
            # reductions over B*N terms in another order (then rounded to the weight dtype)
            scale = max(1.0, exp.abs().max().item())
            assert max_err(got, exp) <= max(1e-4, tol) * scale, name
        else:
            assert max_err(got, exp) <= tol * max(1.0, exp.abs().max().item()), name


@cuda_only
def test_cuda_device_mix_is_rejected():
    layout, x, order, w, b = make_inputs(2, 196, 4, 2, 'cuda', dtype=torch.float32)
    args = layout_args(layout)
    with pytest.raises(ValueError, match='order is on cpu but tokens are on cuda'):
        OP.sg_aggregate(x, order.cpu(), w, b, *args)
    with pytest.raises(ValueError, match='weight is on cpu but tokens are on cuda'):
        OP.sg_aggregate(x, order, w.cpu(), b, *args)
    with pytest.raises(ValueError, match='bias is on cpu but tokens are on cuda'):
        OP.sg_aggregate(x, order, w, b.cpu(), *args)


_OUT_OF_RANGE = """
import torch
from mmsgformer.ops import segment_layout
layout = segment_layout(196, 2)
x = torch.randn(2, 196, 4, device='cuda')
order = torch.argsort(torch.rand(2, 196, device='cuda'), dim=1)
order[1, 7] = 196
w = torch.ones(sum(layout.group_sizes), device='cuda')
b = torch.zeros(layout.num_segments, device='cuda')
out = torch.ops.mmsgformer.sg_aggregate(x, order, w, b, list(layout.starts),
                                        list(layout.lengths), list(layout.group_sizes))
torch.cuda.synchronize()
print('NO ASSERT')
"""


@cuda_only
def test_cuda_out_of_range_order_trips_the_kernel_assert():
    """An index outside 0..N-1 stops the CUDA kernel (in a subprocess: the context is lost)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, '-c', _OUT_OF_RANGE], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(REPO))
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'NO ASSERT' not in text, text[-2000:]
    assert 'device-side assert' in text or 'token >= 0 && token < N' in text, text[-2000:]


@cuda_only
def test_cuda_grid_stride_loops():
    """Inputs larger than one launch grid: the grid-stride loops cover the rest exactly."""
    free, _ = torch.cuda.mem_get_info()
    # backward: more ranks than warps in the grid (B*N > 2**23), C = 1
    B, N = BACKWARD_GRID_RANKS // (200 * 334) + 2, 200 * 334
    assert B * N > BACKWARD_GRID_RANKS
    layout, x, order, w, b = make_inputs(B, N, 1, 8, 'cuda', seed=1, requires_grad=True)
    g = torch.randn(B, layout.num_out, 1, dtype=torch.float64, device='cuda')
    got = torch.autograd.grad(sg_aggregate(x, order, w, b, layout, impl='op'), (x, w, b), g)
    exp = torch.autograd.grad(sg_aggregate_reference(x, order, w, b, layout), (x, w, b), g)
    for a, e in zip(got, exp):
        assert max_err(a, e) <= 1e-10 * max(1.0, e.abs().max().item())
    assert torch.count_nonzero(got[0]).item() == B * N
    del got, exp, x, order, g
    # forward: more output elements than threads in the grid (B*J*C > 2**28), float32
    N, r, C = 196, 2, 1536
    J = segment_layout(N, r).num_out
    B = FORWARD_GRID_ELEMENTS // (J * C) + 2
    assert B * J * C > FORWARD_GRID_ELEMENTS
    if free < 8 * B * N * C * 4:
        pytest.skip(f'needs about {8 * B * N * C * 4 / 2**30:.1f} GiB of free GPU memory')
    gen = torch.Generator(device='cuda').manual_seed(3)
    layout = segment_layout(N, r)
    x = torch.randn(B, N, C, device='cuda', generator=gen)
    order = torch.argsort(torch.rand(B, N, device='cuda', generator=gen), dim=1)
    w = torch.rand(sum(layout.group_sizes), device='cuda', generator=gen)
    b = torch.rand(layout.num_segments, device='cuda', generator=gen)
    out = sg_aggregate(x, order, w, b, layout, impl='op')
    ref = sg_aggregate_reference(x, order, w, b, layout)
    assert max_err(out, ref) <= 1e-5 * max(1.0, ref.abs().max().item())
    # the last image (reached only by the grid-stride loop) is right too
    assert max_err(out[-1], ref[-1]) <= 1e-5 * max(1.0, ref[-1].abs().max().item())
