"""SG-Former on CUDA against the same model on the CPU (skipped without a CUDA device).

In float64 the two devices compute the same function up to rounding: the stage outputs, the
significance maps, the input gradient and every parameter gradient must agree to ~1e-9 relative,
for a tiny arch and SG-Former-S, at 224x224 and at the detection size 800x1344, with the compiled
op (``sga_impl='op'``: the CUDA kernel on one side, the CPU kernel on the other). Inference
(``torch.no_grad``) is compared separately because the model takes other code paths there.
Also: bfloat16/float16 autocast training steps on CUDA stay finite and close to float32, and the
tiny model compiled with ``torch.compile(fullgraph=True)`` (inductor) matches eager in float64.
``tools/gpu_check.py`` runs this file on a GPU machine.
"""
import copy

import pytest
import torch

from mmsgformer.models import SGFormer
from mmsgformer.ops import op_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device visible')

TINY = dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 4, 4], depths=[2, 2, 2, 1])
CASES = [('tiny', (224, 224), 2), ('tiny', (800, 1344), 1), ('s', (224, 224), 2),
         ('s', (800, 1344), 1)]


def build(arch: str, impl: str = 'op') -> SGFormer:
    """The backbone with all four outputs; ``'tiny'`` is the 2-2-2-1 test arch (mlp_ratio 2)."""
    torch.manual_seed(0)
    if arch == 'tiny':
        return SGFormer(arch=dict(TINY), mlp_ratio=2, sga_impl=impl)
    return SGFormer(arch=arch, sga_impl=impl)


def rel_err(got: torch.Tensor, exp: torch.Tensor) -> float:
    """max |got - exp| / max(max |exp|, 1e-30), on the CPU in float64."""
    got, exp = got.detach().double().cpu(), exp.detach().double().cpu()
    return ((got - exp).abs().max() / exp.abs().max().clamp_min(1e-30)).item()


def loss_of(outs, weights):
    return sum((o * w).sum() for o, w in zip(outs, weights))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_training_step(dtype):
    """A mixed-precision step at a detection-like size: finite, and close to float32.

    The significance ranking may change under reduced precision (near-ties), so the comparison
    with float32 is a cosine similarity, not an elementwise bound.
    """
    model = build('tiny').cuda().train()
    x = torch.randn(2, 3, 320, 480, device='cuda', generator=torch.Generator('cuda').manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    with torch.autocast('cuda', dtype=dtype):
        outs = model(x)
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    for i, (o, r) in enumerate(zip(outs, ref)):
        assert o.shape == r.shape and torch.isfinite(o).all(), f'stage {i + 1}'
        cos = torch.nn.functional.cosine_similarity(o.float().flatten(), r.flatten(), dim=0)
        assert cos.item() > 0.9, f'stage {i + 1}: cosine {cos.item():.3f} to float32'
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_compile_fullgraph_inductor_matches_eager_float64():
    model = build('tiny').double().cuda().eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64, device='cuda').requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend='inductor')
    got = compiled(x)
    exp = model(x)
    for i, (g, e) in enumerate(zip(got, exp)):
        assert rel_err(g, e) <= 1e-9, f'stage {i + 1} output'
    weights = [torch.randn_like(e) for e in exp]
    gx_got = torch.autograd.grad(loss_of(got, weights), x)[0]
    gx_exp = torch.autograd.grad(loss_of(exp, weights), x)[0]
    assert rel_err(gx_got, gx_exp) <= 1e-9


# last: the SG-Former-S 800x1344 case is the slowest (its float64 CPU side)
@pytest.mark.parametrize('arch,hw,batch', CASES, ids=[f'{a}-{h}x{w}' for a, (h, w), _ in CASES])
def test_cuda_matches_cpu_float64(arch, hw, batch):
    assert op_available(), 'the mmsgformer._C extension is not built'
    cpu = build(arch).double().eval()
    gpu = copy.deepcopy(cpu).cuda()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, *hw, dtype=torch.float64, generator=gen)

    # inference paths (no autograd): outputs and significance maps
    with torch.no_grad():
        outs_c, recs_c = cpu(x, return_significance=True)
        outs_g, recs_g = gpu(x.cuda(), return_significance=True)
    assert len(outs_c) == len(outs_g) == 4 and len(recs_c) == len(recs_g) == 3
    for i, (g, c) in enumerate(zip(outs_g, outs_c)):
        assert g.device.type == 'cuda' and g.shape == c.shape
        assert rel_err(g, c) <= 1e-9, f'no_grad stage {i + 1} output'
    for rg, rc in zip(recs_g, recs_c):
        assert rel_err(rg.significance, rc.significance) <= 1e-9, f'significance stage {rg.stage}'

    # training paths: forward + backward, gradients of the input and of every parameter
    weights = [torch.randn(o.shape, dtype=torch.float64, generator=gen) for o in outs_c]
    xc = x.clone().requires_grad_()
    xg = x.cuda().requires_grad_()
    outs_c = cpu(xc)
    outs_g = gpu(xg)
    for i, (g, c) in enumerate(zip(outs_g, outs_c)):
        assert rel_err(g, c) <= 1e-9, f'stage {i + 1} output'
    loss_of(outs_c, weights).backward()
    loss_of(outs_g, [w.cuda() for w in weights]).backward()
    assert rel_err(xg.grad, xc.grad) <= 1e-9, 'input gradient'
    params_g = dict(gpu.named_parameters())
    checked = 0
    for name, pc in cpu.named_parameters():
        pg = params_g[name]
        assert (pc.grad is None) == (pg.grad is None), name
        if pc.grad is None:
            continue
        assert rel_err(pg.grad, pc.grad) <= 1e-8, f'gradient of {name}'
        checked += 1
    assert checked >= 20, checked
