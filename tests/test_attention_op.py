"""Tests of the compiled attention ops (mmsgformer::dot_product_attention and
dot_product_attention_key_mass, design §18).

The op is compared with ``F.scaled_dot_product_attention`` in float64 (<= 1e-12: the portable
kernel) and float32 (each vector kernel the CPU runs: AVX-512 and AVX2 on an AVX-512 CPU), at
the stage shapes of SG-Former and at sizes that leave partial register tiles, key panels and key
chunks; its gradients with float64 gradcheck; its registration with torch.library.opcheck and
torch.compile(fullgraph=True); its errors; and the model's use of it (inference only).
"""
import pytest
import torch
import torch.nn.functional as F

from mmsgformer import ops
from mmsgformer.ops import (dot_product_attention, dot_product_attention_key_mass_reference,
                            dot_product_attention_reference, op_available, vector_kernel_applies,
                            vector_training_applies)
from mmsgformer.ops.attention import (CPU_ATTENTION_ENV, VECTOR_KERNELS, cpu_kernel,
                                      vector_kernels_here)

BUILT = op_available()  # loads mmsgformer._C (registers torch.ops.mmsgformer.*) when built
OP = torch.ops.mmsgformer
pytestmark = pytest.mark.skipif(not BUILT, reason='the C++ extension is not built')
needs_opcheck = pytest.mark.skipif(
    not hasattr(torch.library, 'opcheck'),
    reason=f'torch {torch.__version__} has no torch.library.opcheck (torch >= 2.4)')


def _float32_kernels():
    """The float32 kernels at D = 32 this CPU runs: both vector kernels on an AVX-512 CPU (the
    AVX2 one by MMSGFORMER_CPU_ATTENTION=avx2), else its best one."""
    return list(vector_kernels_here()) or [cpu_kernel(32)]


@pytest.fixture(params=_float32_kernels())
def float32_kernel(request, monkeypatch):
    """Runs the test with each kernel of :func:`_float32_kernels`."""
    if request.param == 'avx2':
        monkeypatch.setenv(CPU_ATTENTION_ENV, 'avx2')
    assert cpu_kernel(32) == request.param
    return request.param


def make_qkv(B, H, Nq, Nk, D, dtype=torch.float32, seed=0, spread=1.0, requires_grad=False):
    """q as the (B, Nq, H, D) -> (B, H, Nq, D) view the model passes; k, v contiguous."""
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, Nq, H, D, generator=gen, dtype=dtype) * spread).transpose(1, 2)
    k = torch.randn(B, H, Nk, D, generator=gen, dtype=dtype) * spread
    v = torch.randn(B, H, Nk, D, generator=gen, dtype=dtype)
    if requires_grad:
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    return q, k, v


def expected(q, k, v, scale):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)


def test_kernel_name_follows_the_cpu(monkeypatch):
    import platform
    flags = open('/proc/cpuinfo').read() if platform.system() == 'Linux' else ''
    x86 = platform.machine() == 'x86_64'
    has_avx2 = x86 and ' avx2' in flags and ' fma' in flags
    best = 'avx512' if x86 and ' avx512f' in flags else 'avx2' if has_avx2 else 'portable'
    assert cpu_kernel(32) == best
    assert cpu_kernel(24) == cpu_kernel(64) == 'portable'
    monkeypatch.setenv(CPU_ATTENTION_ENV, 'avx2')  # the AVX2 kernel even on an AVX-512 CPU
    assert cpu_kernel(32) == ('avx2' if has_avx2 else 'portable')
    assert cpu_kernel(24) == 'portable'


# (B, H, Nq, Nk, D): SG-Former stage shapes (self-guided stage 3 at 224 and 800x1344 shrunk
# in Nq, stage 4) and sizes with partial tiles of 12 rows / 48-row tasks, partial 16- and
# 32-key panels, more than one 256-key chunk, a single key, a single query.
SHAPES = [(2, 8, 196, 147, 32), (1, 8, 300, 3150, 32), (2, 16, 49, 49, 32), (1, 2, 61, 517, 32),
          (3, 1, 13, 5, 32), (1, 2, 7, 1, 32), (1, 1, 1, 300, 32), (2, 3, 50, 257, 32),
          (1, 2, 37, 48, 24), (1, 1, 9, 20, 64)]


@pytest.mark.parametrize('shape', SHAPES)
def test_float64_equals_sdpa(shape):
    B, H, Nq, Nk, D = shape
    q, k, v = make_qkv(B, H, Nq, Nk, D, dtype=torch.float64, seed=Nq + Nk)
    out, lse = OP.dot_product_attention(q, k, v, D ** -0.5)
    assert out.shape == (B, H, Nq, D) and out.dtype == torch.float64
    assert torch.allclose(out, expected(q, k, v, D ** -0.5), atol=1e-12, rtol=0)
    exp_lse = torch.logsumexp((q @ k.transpose(-2, -1)) * D ** -0.5, dim=-1)
    assert lse.dtype == torch.float64 and torch.allclose(lse, exp_lse, atol=1e-12, rtol=0)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('spread', [1.0, 4.0])
def test_float32_close_to_sdpa(shape, spread, float32_kernel):
    """Within a few float32 roundings of the float64 result, like PyTorch's own kernel; spread
    4 makes peaked softmaxes (logits up to ~100), which test the running maximum."""
    B, H, Nq, Nk, D = shape
    q, k, v = make_qkv(B, H, Nq, Nk, D, seed=Nq * Nk, spread=spread)
    out, lse = OP.dot_product_attention(q, k, v, D ** -0.5)
    exp = expected(q, k, v, D ** -0.5)
    torch_err = (F.scaled_dot_product_attention(q, k, v, scale=D ** -0.5) - exp).abs().max()
    err = (out - exp).abs().max()
    assert err <= max(4 * torch_err, 1e-6), (err, torch_err)
    exp_lse = torch.logsumexp((q.double() @ k.double().transpose(-2, -1)) * D ** -0.5, dim=-1)
    assert torch.allclose(lse.double(), exp_lse, atol=1e-5, rtol=1e-6)


def test_output_layout_is_tokens_major():
    """The output's memory is (B, Nq, H, D): the model's transpose + reshape copies nothing."""
    q, k, v = make_qkv(2, 4, 30, 20, 32)
    out = OP.dot_product_attention(q, k, v, 0.2)[0]
    assert out.stride() == (30 * 4 * 32, 32, 4 * 32, 1)
    merged = out.transpose(1, 2).reshape(2, 30, 128)
    assert merged.data_ptr() == out.data_ptr()


def test_strided_and_non_contiguous_inputs():
    """Any strides over (B, H, N); a strided head dimension is copied first."""
    gen = torch.Generator().manual_seed(3)
    kv = torch.randn(2, 70, 2, 4, 32, generator=gen).permute(2, 0, 3, 1, 4)  # like the model
    q = torch.randn(2, 4, 64, 50, generator=gen)[..., ::2, :32:1]  # row stride 100
    k, v = kv[0], kv[1]
    qd = torch.randn(2, 4, 32, 25, generator=gen).transpose(-2, -1)  # strided head dim
    for qq in (q, qd):
        out = OP.dot_product_attention(qq, k, v, 0.3)[0]
        assert torch.allclose(out, expected(qq, k, v, 0.3).float(), atol=1e-5, rtol=0)


def test_empty_query_set():
    q, k, v = make_qkv(2, 3, 0, 5, 32)
    out, lse = OP.dot_product_attention(q, k, v, 0.1)
    assert out.shape == (2, 3, 0, 32) and lse.shape == (2, 3, 0)


def test_gradcheck_float64():
    for D in (32, 5):
        q, k, v = make_qkv(2, 2, 7, 9, D, dtype=torch.float64, seed=D, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, c: OP.dot_product_attention(a, b, c, 0.4)[0],
                                        (q, k, v))


def test_gradients_equal_sdpa():
    q, k, v = make_qkv(1, 2, 40, 33, 32, dtype=torch.float64, seed=5, requires_grad=True)
    g = torch.randn(1, 2, 40, 32, dtype=torch.float64)
    got = torch.autograd.grad(OP.dot_product_attention(q, k, v, 0.2)[0], (q, k, v), g)
    exp = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, scale=0.2), (q, k, v), g)
    for a, e in zip(got, exp):
        assert torch.allclose(a, e, atol=1e-12, rtol=0)


@pytest.mark.parametrize('shape', SHAPES)
def test_float32_gradients_close_to_sdpa(shape, float32_kernel):
    """The backward kernel (a vector kernel at D=32): within a few float32 roundings of
    the float64 gradients, like PyTorch's own flash backward."""
    B, H, Nq, Nk, D = shape
    q, k, v = make_qkv(B, H, Nq, Nk, D, seed=Nq + 3 * Nk, spread=2.0, requires_grad=True)
    g = torch.randn(B, H, Nq, D, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(OP.dot_product_attention(q, k, v, D ** -0.5)[0], (q, k, v), g)
    ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, scale=D ** -0.5),
                              (q, k, v), g)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    exp = torch.autograd.grad(F.scaled_dot_product_attention(q64, k64, v64, scale=D ** -0.5),
                              (q64, k64, v64), g.double())
    for name, a, r, e in zip('qkv', got, ref, exp):
        err, torch_err = (a - e).abs().max(), (r - e).abs().max()
        assert err <= max(4 * torch_err, 1e-5 * e.abs().max()), (name, err, torch_err)


def test_backward_of_an_empty_query_set():
    q, k, v = make_qkv(1, 2, 0, 5, 32, requires_grad=True)
    out = OP.dot_product_attention(q, k, v, 0.1)[0]
    gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
    assert gq.shape == q.shape and torch.equal(gk, torch.zeros_like(k))
    assert torch.equal(gv, torch.zeros_like(v))


def test_backward_op_checks():
    q, k, v = make_qkv(1, 2, 5, 6, 32)
    out, lse = OP.dot_product_attention(q, k, v, 0.1)
    with pytest.raises(ValueError, match=r'lse must be \(B, H, Nq\) = \(1, 2, 5\)'):
        OP.dot_product_attention_backward(out, q, k, v, out, lse[..., :4], 0.1)
    with pytest.raises(ValueError, match=r'grad_out must be \(B, H, Nq, D\)'):
        OP.dot_product_attention_backward(out[:, :, :4], q, k, v, out, lse, 0.1)
    with pytest.raises(ValueError, match="out .* must have q's dtype"):
        OP.dot_product_attention_backward(out, q, k, v, out.double(), lse, 0.1)


@needs_opcheck
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_backward_opcheck(dtype):
    q, k, v = make_qkv(2, 2, 29, 40, 32, dtype=dtype)
    out, lse = OP.dot_product_attention(q, k, v, 0.25)
    g = torch.randn_like(out)
    torch.library.opcheck(OP.dot_product_attention_backward, (g, q, k, v, out, lse, 0.25))


@needs_opcheck
@pytest.mark.parametrize('op', ['dot_product_attention', 'dot_product_attention_key_mass'])
@pytest.mark.parametrize('dtype, grad', [(torch.float32, False), (torch.float64, True)])
def test_opcheck(op, dtype, grad):
    q, k, v = make_qkv(2, 2, 29, 40, 32, dtype=dtype, requires_grad=grad)
    torch.library.opcheck(getattr(OP, op), (q, k, v, 0.25))


def test_compile_fullgraph():
    q, k, v = make_qkv(1, 2, 50, 40, 32, seed=9)

    def f(q_, k_, v_):
        return torch.tanh(OP.dot_product_attention(q_ * 2.0, k_, v_, 0.3)[0]).sum(-1)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend='aot_eager')(q, k, v)
    assert torch.allclose(got, f(q, k, v), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ key mass

@pytest.mark.parametrize('shape', SHAPES)
def test_key_mass_float64_equals_reference(shape):
    B, H, Nq, Nk, D = shape
    q, k, v = make_qkv(B, H, Nq, Nk, D, dtype=torch.float64, seed=Nq + 2 * Nk)
    out, lse, mass = OP.dot_product_attention_key_mass(q, k, v, D ** -0.5)
    exp_out, exp_mass = dot_product_attention_key_mass_reference(q, k, v, D ** -0.5)
    assert mass.shape == (B, Nk) and mass.dtype == torch.float64
    assert torch.allclose(out, exp_out, atol=1e-12, rtol=0)
    assert torch.allclose(mass, exp_mass, atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize('shape', SHAPES)
def test_key_mass_float32_close_to_reference(shape, float32_kernel):
    """The output equals dot_product_attention's; the mass is within 1e-5 relative of float64
    (each work item sums 24 or 48 rows in float32, the rest is summed in float64)."""
    B, H, Nq, Nk, D = shape
    q, k, v = make_qkv(B, H, Nq, Nk, D, seed=Nq * Nk + 1, spread=2.0)
    out, lse, mass = OP.dot_product_attention_key_mass(q, k, v, D ** -0.5)
    exp_out, exp_lse = OP.dot_product_attention(q, k, v, D ** -0.5)
    assert torch.equal(out, exp_out) and torch.equal(lse, exp_lse)
    _, exp_mass = dot_product_attention_key_mass_reference(q.double(), k.double(), v.double(),
                                                           D ** -0.5)
    assert torch.allclose(mass.double(), exp_mass, atol=1e-9, rtol=1e-5)
    assert abs(mass.double().sum(-1) - 1).max() < 1e-5  # a distribution over the keys


def test_key_mass_of_an_empty_query_set_is_zero():
    q, k, v = make_qkv(2, 3, 0, 5, 32)
    out, _, mass = OP.dot_product_attention_key_mass(q, k, v, 0.1)
    assert out.shape == (2, 3, 0, 32) and torch.equal(mass, torch.zeros(2, 5))


def test_key_mass_gradcheck_and_no_gradient_through_mass():
    q, k, v = make_qkv(1, 2, 6, 9, 32, dtype=torch.float64, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: OP.dot_product_attention_key_mass(a, b, c, 0.4)[0], (q, k, v))
    out, lse, mass = OP.dot_product_attention_key_mass(q, k, v, 0.4)
    assert out.requires_grad and not mass.requires_grad and not lse.requires_grad


def test_key_mass_fake_kernel():
    q, k, v = make_qkv(2, 2, 5, 6, 32)
    out, lse, mass = OP.dot_product_attention_key_mass(q.to('meta'), k.to('meta'), v.to('meta'),
                                                       0.1)
    assert out.shape == (2, 2, 5, 32) and lse.shape == (2, 2, 5) and mass.shape == (2, 6)
    assert mass.device.type == 'meta'
    with pytest.raises(ValueError, match='k has 6 keys but v has 5 values'):
        OP.dot_product_attention_key_mass(q, k, v[:, :, :5], 0.1)


def test_coarse_branch_uses_the_key_mass_op_on_large_inputs(monkeypatch):
    """Hybrid-scale attention in float32 inference above the chunking size: the coarse branch's
    output and key mass come from the op and equal the chunked pass's to float32 rounding."""
    from mmsgformer.models import fast_paths
    from mmsgformer.models.attention import HybridScaleAttention
    if cpu_kernel(32) not in VECTOR_KERNELS:
        pytest.skip("this CPU has neither AVX-512 nor AVX2: the chunked pass is kept")
    torch.manual_seed(0)
    H, W = 32, 48
    module = HybridScaleAttention(128, 4, 4).eval()
    y = torch.randn(2, H * W, 128)
    monkeypatch.setattr(fast_paths, '_CHUNK_INFERENCE_ABOVE', 0)
    calls = []
    real = ops.dot_product_attention_key_mass
    monkeypatch.setattr(ops, 'dot_product_attention_key_mass',
                        lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        out, significance = module(y, H, W)
        assert calls == [(2, 2, H * W, 32)]  # the coarse group: 2 of the 4 heads
        monkeypatch.setattr(ops, 'vector_kernel_applies', lambda *a: False)
        exp_out, exp_significance = module(y, H, W)
    assert torch.allclose(out, exp_out, atol=1e-5, rtol=0)
    assert torch.allclose(significance, exp_significance, atol=1e-6, rtol=1e-5)


def _bad_cases():
    q, k, v = make_qkv(1, 2, 5, 6, 32)
    return {
        'q_3d': ((q[0], k, v), r'q must be \(B, H, Nq, D\)'),
        'k_3d': ((q, k[0], v), r'k must be \(B, H, N, D\)'),
        'half': ((q.half(), k.half(), v.half()), 'dtype must be float32 or float64'),
        'k_dtype': ((q, k.double(), v), 'k dtype .* must equal q dtype'),
        'heads': ((q, k[:, :1], v[:, :1]), r'k must be \(B, H, Nk, D\)'),
        'head_dim': ((q, k[..., :16], v), r'k must be \(B, H, Nk, D\)'),
        'values': ((q, k, v[:, :, :5]), 'k has 6 keys but v has 5 values'),
        'no_keys': ((q, k[:, :, :0], v[:, :, :0]), r'no keys \(Nk=0\)'),
    }


@pytest.mark.parametrize('case', sorted(_bad_cases()))
def test_bad_input_raises_value_error(case):
    args, match = _bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        OP.dot_product_attention(*args, 0.1)


def test_fake_kernel_checks_and_layout():
    q, k, v = make_qkv(1, 2, 5, 6, 32)
    meta = OP.dot_product_attention(q.to('meta'), k.to('meta'), v.to('meta'), 0.1)[0]
    assert meta.shape == (1, 2, 5, 32) and meta.stride() == (320, 32, 64, 1)
    with pytest.raises(ValueError, match='k dtype .* must equal q dtype'):
        OP.dot_product_attention(q.to('meta'), k.double().to('meta'), v.to('meta'), 0.1)


# ------------------------------------------------------------------------- the Python face

def test_python_face_implementations():
    q, k, v = make_qkv(1, 2, 20, 30, 32, dtype=torch.float64)
    exp = expected(q, k, v, 0.2)
    for impl in ('auto', 'op', 'reference', 'torch'):
        assert torch.allclose(dot_product_attention(q, k, v, 0.2, impl=impl), exp, atol=1e-12)
    assert torch.allclose(dot_product_attention_reference(q, k, v, 0.2), exp, atol=1e-12)
    with pytest.raises(ValueError, match="impl='fast' must be one of"):
        dot_product_attention(q, k, v, 0.2, impl='fast')
    with pytest.raises(ValueError, match="q is on meta but the op has only a CPU kernel"):
        dot_product_attention(q.to('meta'), k.to('meta'), v.to('meta'), 0.2, impl='op')


def test_vector_training_applies_with_enough_heads():
    vector = cpu_kernel(32) in VECTOR_KERNELS
    threads = torch.get_num_threads()
    q, k, v = make_qkv(1, threads, 20, 30, 32, requires_grad=True)
    assert vector_training_applies(q, k, v) == vector
    if threads > 1:
        assert not vector_training_applies(q[:, 1:], k[:, 1:], v[:, 1:])
    assert not vector_training_applies(q.double(), k.double(), v.double())


def test_environment_keeps_torch_kernels(monkeypatch):
    q, k, v = make_qkv(1, 2, 20, 30, 32)
    monkeypatch.setenv(CPU_ATTENTION_ENV, 'torch')
    assert not vector_kernel_applies(q, k, v)
    assert not vector_training_applies(q.requires_grad_(), k, v)
    monkeypatch.setenv(CPU_ATTENTION_ENV, 'fast')
    with pytest.raises(ValueError, match=r"MMSGFORMER_CPU_ATTENTION='fast' must be one of "
                                         r"\('auto', 'avx2', 'torch'\)"):
        vector_kernel_applies(q.detach(), k, v)


def test_vector_kernel_applies_in_training_with_enough_heads():
    threads = torch.get_num_threads()
    q, k, v = make_qkv(1, threads, 20, 30, 32)
    vector = cpu_kernel(32) in VECTOR_KERNELS
    assert vector_kernel_applies(q, k, v) == vector
    assert not vector_kernel_applies(q.double(), k.double(), v.double())
    assert not vector_kernel_applies(q[..., :24], k[..., :24], v[..., :24])
    qg = q.detach().requires_grad_()
    assert vector_kernel_applies(qg, k, v) == vector_training_applies(qg, k, v) == vector
    if threads > 1:
        one_head = qg[:, :1], k[:, :1], v[:, :1]
        assert not vector_kernel_applies(*one_head)
        with torch.no_grad():
            assert vector_kernel_applies(*one_head) == vector


def test_attention_modules_with_the_op_equal_torch_kernel(monkeypatch):
    """Self-guided and standard attention in float32 inference: the op's output equals the
    one with PyTorch's kernel to float32 rounding (same significance map, same weights)."""
    from mmsgformer.models.attention import SelfGuidedAttention, StandardAttention
    torch.manual_seed(0)
    H, W = 12, 16
    y = torch.randn(2, H * W, 128)
    significance = torch.rand(2, H, W)
    for module in (SelfGuidedAttention(128, 4, 4), StandardAttention(128, 4)):
        module.eval()
        with torch.no_grad():
            fast = module(y, H, W, significance)[0]
            with monkeypatch.context() as m:
                m.setattr(ops, 'vector_kernel_applies', lambda *a: False)
                ref = module(y, H, W, significance)[0]
        assert torch.allclose(fast, ref, atol=1e-5, rtol=0)


def test_self_guided_training_with_the_op_equals_torch_kernel(monkeypatch):
    """float32 training of a self-guided block: output and gradients with the op (where it
    applies) equal those with PyTorch's kernels to float32 rounding."""
    from mmsgformer.models.attention import SelfGuidedAttention
    torch.manual_seed(0)
    H, W = 12, 16
    module = SelfGuidedAttention(128, 4, 4)
    y = torch.randn(2, H * W, 128, requires_grad=True)
    significance = torch.rand(2, H, W)
    results = []
    for applies in (True, False):
        with monkeypatch.context() as m:
            if not applies:
                m.setattr(ops, 'vector_kernel_applies', lambda *a: False)
            out = module(y, H, W, significance)[0]
            grads = torch.autograd.grad(out.square().sum(), [y] + list(module.parameters()))
        results.append((out, grads))
    (out, grads), (exp_out, exp_grads) = results
    assert torch.allclose(out, exp_out, atol=1e-5, rtol=0)
    for a, e in zip(grads, exp_grads):
        assert torch.allclose(a, e, atol=1e-4 * e.abs().max(), rtol=1e-4)


def test_model_uses_the_ops_where_they_apply(monkeypatch):
    """float32 inference goes through the op in every self-guided and standard block (heads of
    32); training where a block has at least as many (b, h) pairs as threads; the plain path
    never."""
    from mmsgformer.models.sgformer import SGFormer
    if cpu_kernel(32) not in VECTOR_KERNELS:
        pytest.skip("this CPU has neither AVX-512 nor AVX2: the model keeps PyTorch's kernel")
    torch.manual_seed(0)
    arch = dict(embed_dims=[64, 128, 256, 512], num_heads=[2, 4, 8, 16], depths=[2, 2, 2, 1])
    x = torch.randn(1, 3, 64, 96)
    calls = []
    real = ops.dot_product_attention
    monkeypatch.setattr(ops, 'dot_product_attention',
                        lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    model = SGFormer(arch=arch).eval()
    with torch.no_grad():
        model(x)
    # one self-guided block in each of stages 1-3, one standard block: all heads of 32
    shapes = [(2, 384, 32), (4, 96, 32), (8, 24, 32), (16, 6, 32)]
    assert [tuple(s[1:]) for s in calls] == shapes
    calls.clear()
    model.train()
    sum(o.square().mean() for o in model(x)).backward()
    threads = torch.get_num_threads()
    assert [tuple(s[1:]) for s in calls] == [s for s in shapes if s[0] >= threads]
    calls.clear()
    with torch.no_grad():
        SGFormer(arch=arch, fast_path=False).eval()(x)
    assert calls == []
