"""Tests of the compiled significance-guided aggregation op (mmsgformer::sg_aggregate).

The op is compared with the pure-PyTorch reference (a literal gather + Linear implementation) in
float64 (<= 1e-12) and float32 (<= 1e-6), at the official token counts and at the non-multiple
counts of detection inputs; its gradients are checked with gradcheck in float64; its
registration with torch.library.opcheck and torch.compile(fullgraph=True).
"""
import math
import os

import pytest
import torch

from mmsgformer.ops import (debug_enabled, op_available, segment_layout, set_debug, sg_aggregate,
                            sg_aggregate_reference)

BUILT = op_available()  # loads mmsgformer._C (registers torch.ops.mmsgformer.*) when built
OP = torch.ops.mmsgformer

# (N, sr_ratio): official stage sizes at 224 and stage grids of detection inputs
# (800x1333 -> 200x334, 100x167, 50x84; 333x517 -> 84x130, 42x65, 21x33).
OFFICIAL = [(3136, 8), (784, 4), (196, 2)]
DETECTION = [(200 * 334, 8), (100 * 167, 4), (50 * 84, 2), (84 * 130, 8), (42 * 65, 4),
             (21 * 33, 2)]


def make_inputs(B, N, C, r, dtype=torch.float64, seed=0, requires_grad=False):
    """Tokens ~ N(0, 1), a random ranking, and f_k weights/biases with nn.Linear's init."""
    gen = torch.Generator().manual_seed(seed)
    layout = segment_layout(N, r)
    x = torch.randn(B, N, C, generator=gen, dtype=dtype)
    order = torch.argsort(torch.rand(B, N, generator=gen), dim=1)
    w = torch.cat([(torch.rand(g, generator=gen, dtype=dtype) * 2 - 1) / math.sqrt(g)
                   for g in layout.group_sizes])
    b = (torch.rand(layout.num_segments, generator=gen, dtype=dtype) * 2 - 1) * 0.1
    if requires_grad:
        x.requires_grad_()
        w.requires_grad_()
        b.requires_grad_()
    return layout, x, order, w, b


def layout_args(layout):
    return list(layout.starts), list(layout.lengths), list(layout.group_sizes)


def test_op_is_built():
    assert BUILT and op_available(), 'the C++ extension mmsgformer._C must always build (CPU)'
    assert hasattr(OP, 'sg_aggregate') and hasattr(OP, 'sg_aggregate_backward')


def test_layout_counts_used_by_op():
    # official counts (design §6) and the generalized ceil rule at 200x334
    assert segment_layout(3136, 8).counts == (4, 28, 28)
    assert segment_layout(784, 4).counts == (4, 28, 28)
    assert segment_layout(196, 2).counts == (49, 98)
    lay = segment_layout(200 * 334, 8)
    assert lay.lengths == (16700, 33400, 16700)
    assert lay.counts == (86, 597, 597) and lay.num_out == 1280
    layout, x, order, w, b = make_inputs(1, 200 * 334, 2, 8)
    assert OP.sg_aggregate(x, order, w, b, *layout_args(layout)).shape == (1, 1280, 2)


@pytest.mark.parametrize('N,r', OFFICIAL + DETECTION)
def test_forward_matches_reference(N, r):
    layout, x, order, w, b = make_inputs(2, N, 16, r, seed=N + r)
    ref = sg_aggregate_reference(x, order, w, b, layout)
    out = sg_aggregate(x, order, w, b, layout, impl='op')
    assert out.shape == ref.shape == (2, layout.num_out, 16)
    assert (out - ref).abs().max().item() <= 1e-12
    x32, w32, b32 = x.float(), w.float(), b.float()
    out32 = sg_aggregate(x32, order, w32, b32, layout, impl='op')
    ref32 = sg_aggregate_reference(x32, order, w32, b32, layout)
    assert out32.dtype == torch.float32
    assert (out32 - ref32).abs().max().item() <= 1e-6


@pytest.mark.parametrize('r', [8, 4, 2])
def test_small_counts_forward_and_backward(r):
    # every N from 1 to 40 (empty segments, short groups, single tokens), plus a few above 784
    for N in list(range(1, 41)) + [785, 799, 1000]:
        layout, x, order, w, b = make_inputs(2, N, 3, r, seed=N, requires_grad=True)
        out = sg_aggregate(x, order, w, b, layout, impl='op')
        g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(N))
        grads = torch.autograd.grad(out, (x, w, b), g)
        ref = sg_aggregate_reference(x, order, w, b, layout)
        ref_grads = torch.autograd.grad(ref, (x, w, b), g)
        assert (out - ref).abs().max().item() <= 1e-12, N
        for got, exp in zip(grads, ref_grads):
            assert (got - exp).abs().max().item() <= 1e-12, N


@pytest.mark.parametrize('N,r', OFFICIAL + [(200 * 334, 8), (100 * 167, 4), (21 * 33, 2)])
def test_backward_matches_reference(N, r):
    layout, x, order, w, b = make_inputs(2, N, 8, r, seed=3 * N, requires_grad=True)
    g = torch.randn(2, layout.num_out, 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(sg_aggregate(x, order, w, b, layout, impl='op'), (x, w, b), g)
    ref = torch.autograd.grad(sg_aggregate_reference(x, order, w, b, layout), (x, w, b), g)
    for got, exp in zip(grads, ref):
        assert got.shape == exp.shape and got.dtype == exp.dtype
        scale = max(1.0, exp.abs().max().item())
        assert (got - exp).abs().max().item() <= 1e-12 * scale
    # every token gets exactly the weight of its slot times its group's output gradient
    gx = grads[0]
    assert torch.count_nonzero(gx.abs().sum(-1)) == 2 * N


@pytest.mark.parametrize('N,r', [(7, 2), (37, 4), (61, 8), (23, 8)])
def test_gradcheck_small(N, r):
    layout, x, order, w, b = make_inputs(2, N, 2, r, seed=N, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: OP.sg_aggregate(x_, order, w_, b_, *layout_args(layout)),
        (x, w, b))


@pytest.mark.parametrize('N,r', [(3136, 8), (784, 4), (50 * 84, 2), (42 * 65, 4)])
def test_gradcheck_fast_mode_official_and_detection(N, r):
    layout, x, order, w, b = make_inputs(1, N, 2, r, seed=N, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: OP.sg_aggregate(x_, order, w_, b_, *layout_args(layout)),
        (x, w, b), fast_mode=True)


def _opcheck_samples():
    samples = []
    for (B, N, C, r, dtype, grad) in [(2, 61, 3, 8, torch.float64, True),
                                      (2, 196, 4, 2, torch.float32, True),
                                      (1, 784, 2, 4, torch.float32, False),
                                      (3, 23, 5, 4, torch.float64, True)]:
        layout, x, order, w, b = make_inputs(B, N, C, r, dtype=dtype, seed=N,
                                             requires_grad=grad)
        samples.append((layout, x, order, w, b))
    return samples


@pytest.mark.skipif(not hasattr(torch.library, 'opcheck'),
                    reason=f'torch {torch.__version__} has no torch.library.opcheck (torch >= 2.4)')
@pytest.mark.parametrize('sample', range(4))
def test_opcheck(sample):
    layout, x, order, w, b = _opcheck_samples()[sample]
    torch.library.opcheck(OP.sg_aggregate, (x, order, w, b, *layout_args(layout)))
    g = torch.randn(x.shape[0], layout.num_out, x.shape[2], dtype=x.dtype)
    torch.library.opcheck(OP.sg_aggregate_backward,
                          (g, x.detach(), order, w.detach(), *layout_args(layout)))


def test_only_tokens_order_weight_saved_for_backward():
    """The op saves tokens + order (+ the small weight), never a permuted copy of the tokens."""
    layout, x, order, w, b = make_inputs(2, 3136, 8, 8, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sg_aggregate(x, order, w, b, layout, impl='op')
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), order.data_ptr(), w.data_ptr()}
    assert sum(t.numel() * t.element_size() for t in saved) == (
        x.numel() * 8 + order.numel() * 8 + w.numel() * 8)
    # the reference (gather + Linear) keeps permuted token copies for backward
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sg_aggregate_reference(x, order, w, b, layout)
    copies = sum(t.numel() for t in saved
                 if t.is_floating_point() and t.data_ptr() != x.data_ptr() and t.dim() >= 2)
    assert copies >= x.numel()


def test_non_contiguous_inputs_are_made_contiguous():
    layout, x, order, w, b = make_inputs(2, 784, 6, 4, seed=5)
    expected = OP.sg_aggregate(x, order, w, b, *layout_args(layout))
    x_nc = x.transpose(0, 2).contiguous().transpose(0, 2)  # same values, channel-first storage
    order_nc = order.t().contiguous().t()
    w_nc = torch.stack([w, -w], dim=1)[:, 0]                   # stride 2
    b_nc = torch.stack([b, -b], dim=1)[:, 0]
    assert not (x_nc.is_contiguous() or order_nc.is_contiguous() or w_nc.is_contiguous())
    got = OP.sg_aggregate(x_nc, order_nc, w_nc, b_nc, *layout_args(layout))
    assert torch.equal(got, expected)
    x_nc.requires_grad_()
    grad = torch.autograd.grad(OP.sg_aggregate(x_nc, order_nc, w_nc, b_nc, *layout_args(layout))
                               .sum(), x_nc)[0]
    ref = torch.autograd.grad(sg_aggregate_reference(x_nc, order, w, b, layout).sum(), x_nc)[0]
    assert (grad - ref).abs().max().item() <= 1e-12


@pytest.mark.parametrize('dtype,w_dtype,tol', [(torch.float16, torch.float16, 2e-3),
                                               (torch.float16, torch.float32, 2e-3),
                                               (torch.bfloat16, torch.bfloat16, 2e-2),
                                               (torch.bfloat16, torch.float32, 2e-2)])
def test_reduced_precision(dtype, w_dtype, tol):
    layout, x, order, w, b = make_inputs(2, 784, 8, 4, seed=7)
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
    ex = torch.autograd.grad(sg_aggregate_reference(xr.double(), order, wr.double(), br.double(),
                                                    layout).sum(), (xr, wr, br))
    assert (gx.double() - ex[0].double()).abs().max().item() <= tol
    assert ((gw.double() - ex[1].double()).abs() / ex[1].double().abs().clamp_min(1)).max() <= tol
    assert torch.equal(gb.double(), torch.tensor([n * 2 * 8 for n in layout.counts],
                                                 dtype=torch.float64))


# ------------------------------------------------------------------------------ bad input

def _bad_cases():
    layout, x, order, w, b = make_inputs(2, 196, 4, 2, dtype=torch.float32)
    st, ln, gs = layout_args(layout)
    return {
        'tokens_2d': ((x[0], order, w, b, st, ln, gs), r'tokens must be \(B, N, C\)'),
        'tokens_int': ((x.long(), order, w, b, st, ln, gs), 'tokens dtype must be'),
        'order_shape': ((x, order[:, :-1], w, b, st, ln, gs), r'order must be \(B, N\)'),
        'order_batch': ((x, order[:1], w, b, st, ln, gs), r'order must be \(B, N\)'),
        'order_dtype': ((x, order.int(), w, b, st, ln, gs), 'order must be int64'),
        'order_float': ((x, order.float(), w, b, st, ln, gs), 'order must be int64'),
        'weight_dtype': ((x, order, w.double(), b.double(), st, ln, gs),
                         'weight dtype .* does not match tokens dtype'),
        'weight_len': ((x, order, w[:-1], b, st, ln, gs),
                       r'weight has 2 elements but must have sum\(group_sizes\) = 3'),
        'weight_2d': ((x, order, w[None], b, st, ln, gs), 'weight must be 1-D'),
        'bias_len': ((x, order, w, b[:1], st, ln, gs), r'bias must have shape \(2,\)'),
        'bias_dtype': ((x, order, w, b.double(), st, ln, gs), 'bias dtype .* must equal'),
        'layout_short': ((x, order, w, b, st, [98, 97], gs),
                         'the layout covers 195 ranks .* but tokens have N=196'),
        'layout_gap': ((x, order, w, b, [0, 99], [98, 98], gs), r'seg_starts\[1\]=99 must be 98'),
        'layout_lists': ((x, order, w, b, st, ln[:1], gs), 'one entry per segment'),
        'group_zero': ((x, order, w, b, st, ln, [2, 0]), r'group_sizes\[1\]=0 must be >= 1'),
        'too_many_segments': ((x, order, torch.zeros(9), torch.zeros(9), [0] * 8 + [0],
                               [0] * 8 + [196], [1] * 9), 'between 1 and 8'),
    }


@pytest.mark.parametrize('case', sorted(_bad_cases()))
def test_bad_input_raises_value_error(case):
    args, match = _bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        OP.sg_aggregate(*args)


def test_bad_input_backward_op():
    layout, x, order, w, b = make_inputs(2, 196, 4, 2, dtype=torch.float32)
    g = torch.zeros(2, layout.num_out, 4)
    with pytest.raises(ValueError, match=r'grad_out must be \(B, num_out, C\) = \(2, 147, 4\)'):
        OP.sg_aggregate_backward(g[:, 1:], x, order, w, *layout_args(layout))
    with pytest.raises(ValueError, match='grad_out dtype'):
        OP.sg_aggregate_backward(g.double(), x, order, w, *layout_args(layout))
    bad = order.clone()
    bad[1, 5] = 196
    with pytest.raises(ValueError, match=r'order\[1, 5\]=196 is out of range'):
        OP.sg_aggregate_backward(g, x, bad, w, *layout_args(layout))


def test_wrong_device_mix():
    layout, x, order, w, b = make_inputs(2, 196, 4, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match='weight is on meta but tokens are on cpu'):
        OP.sg_aggregate(x, order, w.to('meta'), b, *layout_args(layout))
    with pytest.raises(ValueError, match='bias is on meta but tokens are on cpu'):
        OP.sg_aggregate(x, order, w, b.to('meta'), *layout_args(layout))


def test_not_a_permutation_is_rejected_on_cpu():
    layout, x, order, w, b = make_inputs(2, 196, 4, 2)
    dup = order.clone()
    dup[0, 10] = dup[0, 11]
    with pytest.raises(ValueError, match=r'order\[0\] is not a permutation .* appears twice'):
        sg_aggregate(x, dup, w, b, layout, impl='op')
    neg = order.clone()
    neg[1, 0] = -1
    with pytest.raises(ValueError, match=r'order\[1, 0\]=-1 is out of range'):
        sg_aggregate(x, neg, w, b, layout, impl='op')


def test_debug_mode_checks_permutation_for_every_impl():
    layout, x, order, w, b = make_inputs(2, 196, 4, 2)
    dup = order.clone()
    dup[1, 3] = dup[1, 4]
    previous = debug_enabled()
    set_debug(False)
    try:
        # without debug mode the reference silently accepts a non-permutation...
        sg_aggregate(x, dup, w, b, layout, impl='reference')
        set_debug(True)
        with pytest.raises(ValueError, match='order is not a permutation'):
            sg_aggregate(x, dup, w, b, layout, impl='reference')
        with pytest.raises(ValueError, match=r'order must be \(B, N\)'):
            sg_aggregate(x, order[:, :5], w, b, layout, impl='reference')
        out = sg_aggregate(x, order, w, b, layout, impl='op')  # valid input passes
        assert out.shape == (2, 147, 4)
    finally:
        set_debug(previous)


def test_debug_mode_from_environment():
    from mmsgformer.ops import _debug_from_env
    assert _debug_from_env({'MMSGFORMER_DEBUG': '1'}) is True
    assert _debug_from_env({'MMSGFORMER_DEBUG': 'yes'}) is True
    for off in ({}, {'MMSGFORMER_DEBUG': '0'}, {'MMSGFORMER_DEBUG': ''},
                {'MMSGFORMER_DEBUG': 'false'}):
        assert _debug_from_env(off) is False
    # the module default follows the environment of this process
    assert debug_enabled() is _debug_from_env(os.environ)


def test_python_wrapper_errors():
    layout, x, order, w, b = make_inputs(2, 196, 4, 2)
    with pytest.raises(ValueError, match='layout is for N=784 tokens but tokens have N=196'):
        sg_aggregate(x, order, w, b, segment_layout(784, 4))
    with pytest.raises(ValueError, match="impl='fast' must be one of"):
        sg_aggregate(x, order, w, b, layout, impl='fast')
    with pytest.raises(ValueError, match='layout must be a SegmentLayout'):
        sg_aggregate(x, order, w, b, (0, 98), impl='op')


# ------------------------------------------------------------------------------ torch.compile

def test_compile_fullgraph_direct():
    layout, x, order, w, b = make_inputs(2, 784, 8, 4, dtype=torch.float32, seed=11,
                                         requires_grad=True)

    def f(x_, order_, w_, b_):
        y = sg_aggregate(x_ * 2.0, order_, w_, b_, layout, impl='op')
        return torch.tanh(y).sum(dim=-1)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend='aot_eager')
    got = compiled(x, order, w, b)
    exp = f(x, order, w, b)
    assert torch.allclose(got, exp, atol=1e-6, rtol=0)
    g_got = torch.autograd.grad(got.sum(), (x, w, b))
    g_exp = torch.autograd.grad(exp.sum(), (x, w, b))
    for a, e in zip(g_got, g_exp):
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    not hasattr(torch.library, 'register_fake'),
    reason=f"torch {torch.__version__}'s dynamo cannot build the SegmentLayout NamedTuple from a "
           "symbolic token count (Unsupported: call_function UserDefinedClassVariable); "
           "dynamic=True is checked on torch >= 2.4 only")
def test_compile_dynamic_token_count():
    """A layout computed from a symbolic N flows through the SymInt[] schema."""

    def f(x_, order_, w_, b_):
        return sg_aggregate(x_, order_, w_, b_, segment_layout(x_.shape[1], 4), impl='op')

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend='aot_eager', dynamic=True)
    for N in (784, 42 * 65, 33 * 50):
        layout, x, order, w, b = make_inputs(1, N, 4, 4, dtype=torch.float32, seed=N)
        got = compiled(x, order, w, b)
        assert got.shape == (1, layout.num_out, 4)
        assert torch.equal(got, OP.sg_aggregate(x, order, w, b, *layout_args(layout)))


def test_compile_fullgraph_with_debug_checks():
    """Debug mode's permutation check is traced (torch._assert_async), not a graph break."""
    layout, x, order, w, b = make_inputs(2, 196, 4, 2, dtype=torch.float32, seed=2)
    previous = debug_enabled()
    set_debug(True)
    try:
        torch._dynamo.reset()
        compiled = torch.compile(lambda *a: sg_aggregate(*a, layout, impl='op'),
                                 fullgraph=True, backend='aot_eager')
        assert torch.equal(compiled(x, order, w, b), OP.sg_aggregate(x, order, w, b,
                                                                     *layout_args(layout)))
        dup = order.clone()
        dup[0, 1] = dup[0, 0]
        with pytest.raises(RuntimeError, match='order is not a permutation'):
            compiled(x, dup, w, b)
    finally:
        set_debug(previous)


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(torch.library, 'register_fake'),
    reason=f"torch {torch.__version__}'s dynamo cannot trace the backbone's forward "
           "(Unsupported: building the SegmentLayout dataclass in ops/layout.segment_layout); "
           "fullgraph compile of SGFormer is checked on torch >= 2.4 only")
def test_compile_fullgraph_sgformer():
    """A small SGFormer compiles as one graph (backend aot_eager) with the op in it."""
    from torch._dynamo import lookup_backend

    from mmsgformer.models import SGFormer

    torch.manual_seed(0)
    arch = dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 2, 2], depths=[2, 2, 2, 1])
    # float64: in float32 the compiled graph's rounding may flip near-ties of the significance
    # sort (design Q7), which says nothing about the graph
    model = SGFormer(arch=arch, sga_impl='op').double().eval()
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    graphs = []

    def recording_aot_eager(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend('aot_eager')(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=recording_aot_eager)
    with torch.no_grad():
        got = compiled(x)
        exp = model(x)
    assert len(graphs) == 1
    op_calls = [n for n in graphs[0].graph.nodes if 'mmsgformer.sg_aggregate' in str(n.target)]
    assert len(op_calls) == 6  # 3 self-guided blocks x (row-major, column-major) rankings
    assert [tuple(o.shape) for o in got] == [(1, 16, 28, 28), (1, 32, 14, 14), (1, 64, 7, 7),
                                             (1, 128, 4, 4)]
    for a, e in zip(got, exp):
        assert (a - e).abs().max().item() <= 1e-10
