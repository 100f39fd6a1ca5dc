"""Tests of the SGFormer backbone (tiny archs, small inputs, CPU)."""
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmsgformer.models import SGFormer, SignificanceRecord
from mmsgformer.models.attention import HybridScaleAttention, SelfGuidedAttention
from mmsgformer.models.significance import col_to_row_index, rank_tokens
from mmsgformer.ops import segment_layout
from official_sgformer import (TINY, make_official_state_dict, official_forward,
                               official_significance)

MICRO = dict(embed_dims=[8, 16, 32, 32], num_heads=[2, 2, 2, 2], depths=[2, 2, 2, 1])
FROZEN_KEYS = os.path.join(os.path.dirname(__file__), 'data', 'sgformer_s_state_dict.txt')


def tiny(**kw) -> SGFormer:
    kw.setdefault('sga_impl', 'reference')
    return SGFormer(arch=dict(TINY), **kw)


def backbone_part(sd):
    return {k: v for k, v in sd.items() if not k.startswith('head.')}


# --------------------------------------------------------------------------- registry / import
@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_builds_in_every_codebase_scope(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type='SGFormer', arch=dict(TINY), out_indices=(1, 3)))
    assert type(model) is SGFormer
    assert model.out_indices == (1, 3)
    assert model.embed_dims == TINY['embed_dims']


def test_import_does_not_pull_mmdet_or_mmseg():
    code = ('import sys, mmsgformer, mmsgformer.models, mmsgformer.checkpoint; '
            'from mmengine.registry import MODELS; '
            "assert MODELS.get('SGFormer') is not None; "
            "bad = [m for m in ('mmdet', 'mmseg') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


# --------------------------------------------------------------------------- schema / counts
def _appendix_keys():
    """The official SG-Former-S state dict (design Appendix A): ``[(name, shape)]``."""
    rows = []
    for line in open(FROZEN_KEYS).read().strip().splitlines():
        name, shape = line.split(None, 1)
        rows.append((name, tuple(int(v) for v in re.findall(r'\d+', shape))))
    return rows


def test_state_dict_equals_design_appendix_a():
    rows = _appendix_keys()
    assert len(rows) == 669
    with torch.device('meta'):
        model = SGFormer('s')
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    expected = [r for r in rows if not r[0].startswith('head.')]
    assert len(expected) == 667
    assert ours == expected  # names, shapes and official order


@pytest.mark.parametrize('arch,count,entries', [('s', 22_032_981, 667), ('small', 22_032_981, 667),
                                                ('m', 38_176_316, 1067),
                                                ('b', 77_181_293, 1015)])
def test_parameter_counts(arch, count, entries):
    with torch.device('meta'):
        model = SGFormer(arch)
    assert sum(p.numel() for p in model.parameters()) == count
    assert len(model.state_dict()) == entries
    assert not list(model.buffers())


# --------------------------------------------------------------------------- official equality
@pytest.mark.parametrize('size,batch', [((224, 224), 2), ((448, 448), 1), ((224, 448), 1)])
def test_float64_equals_official_path(size, batch):
    grid = (size[0] // 4, size[1] // 4)
    sd = make_official_state_dict(TINY['embed_dims'], TINY['num_heads'], TINY['depths'],
                                  pos_tokens=grid[0] * grid[1], seed=sum(size))
    model = tiny(pretrain_img_size=size).double().eval()
    model.load_state_dict(backbone_part(sd), strict=True)
    x = torch.randn(batch, 3, *size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs, records = model(x, return_significance=True)
        ref, logits = official_forward(sd, x, TINY['num_heads'], TINY['depths'])
        ref_maps = official_significance(sd, x, TINY['num_heads'], TINY['depths'])
    assert len(outs) == 4
    for o, r in zip(outs, ref):
        assert o.shape == r.shape
        assert (o - r).abs().max().item() < 1e-8
        assert r.abs().max().item() > 0.1  # non-trivial values
    assert [(r.stage, r.block, r.sr_ratio) for r in records] == [(0, 0, 8), (1, 0, 4), (2, 0, 2)]
    for rec, m in zip(records, ref_maps):
        assert isinstance(rec, SignificanceRecord)
        assert rec.significance.shape == m.shape
        assert (rec.significance - m).abs().max().item() < 1e-12
    # at official sizes each part averages 1/Nk: the map's mean is 2/49 in every stage (224 px)
    if size == (224, 224):
        for rec in records:
            assert rec.significance.mean().item() == pytest.approx(2 / 49, abs=1e-12)
    # the classifier on top of stage 4 gives the official logits
    ours_logits = torch.nn.functional.linear(outs[3].flatten(2).mean(-1), sd['head.weight'],
                                             sd['head.bias'])
    assert (ours_logits - logits).abs().max().item() < 1e-8


def test_float32_first_map_bitwise_equal_to_official_path():
    """float32: the stem and the first hybrid-scale block use the official operation order, so the
    first significance map (and hence the first sort) is bitwise the official one."""
    torch.manual_seed(0)
    model = tiny(sga_impl='auto').eval()
    model.init_weights()  # official init: near-uniform maps, many near-ties
    sd = dict(model.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        outs, records = model(x, return_significance=True)
        ref, _ = official_forward(sd, x, TINY['num_heads'], TINY['depths'])
        ref_maps = official_significance(sd, x, TINY['num_heads'], TINY['depths'])
    assert torch.equal(records[0].significance, ref_maps[0])
    assert (outs[0] - ref[0]).abs().max().item() < 1e-5


# --------------------------------------------------------------------------- shapes / sizes
@pytest.mark.parametrize('size', [(224, 224), (448, 448), (800, 1333), (512, 512), (333, 517),
                                  (32, 32), (33, 47)])
def test_output_shapes_any_size(size):
    arch = dict(MICRO) if size[0] * size[1] > 448 * 448 else dict(TINY)
    model = SGFormer(arch=arch, sga_impl='reference').eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs, records = model(x, return_significance=True)
    h, w = (math.ceil(math.ceil(s / 2) / 2) for s in size)
    for i, o in enumerate(outs):
        if i > 0:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        assert o.shape == (1, arch['embed_dims'][i], h, w)
        assert torch.isfinite(o).all()
    for rec, o in zip(records, outs):
        assert rec.significance.shape == (1, ) + o.shape[2:]
        assert torch.isfinite(rec.significance).all()
        assert (rec.significance > 0).all()


def test_default_arch_runs():
    model = SGFormer('s', sga_impl='reference').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 112, 160))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 28, 40), (1, 128, 14, 20),
                                             (1, 256, 7, 10), (1, 512, 4, 5)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_out_indices():
    x = torch.randn(1, 3, 64, 96)
    full = tiny().eval()
    with torch.no_grad():
        all_outs = full(x)
        for out_indices in [(0, ), (3, ), (2, 1), (0, 1, 2, 3), (-1, )]:
            model = tiny(out_indices=out_indices).eval()
            model.load_state_dict(full.state_dict())
            outs = model(x)
            assert len(outs) == len(out_indices)
            for o, i in zip(outs, sorted(i % 4 for i in out_indices)):  # stage order
                assert torch.equal(o, all_outs[i])


def test_padding_matches_masked_local_attention():
    """Local significance / output on a 10x9 grid equal a per-window computation on real tokens."""
    torch.manual_seed(0)
    attn = HybridScaleAttention(16, 2, 2).double().eval()
    H, W = 10, 9
    y = torch.randn(2, H * W, 16, dtype=torch.float64)
    for fast in (False, True):
        attn.fast_path = fast
        o2, s_local = attn.window_branch(torch.cat([attn.q2(y), attn.kv2(y)], -1), H, W)
        q2 = attn.q2(y).view(2, H, W, 1, 8)
        k2, v2 = attn.kv2(y).view(2, H, W, 2, 1, 8).unbind(3)
        exp_s = torch.zeros(2, H, W, dtype=torch.float64)
        exp_o = torch.zeros(2, H, W, 8, dtype=torch.float64)
        for y0 in range(0, H, 7):
            for x0 in range(0, W, 7):
                sl = (slice(None), slice(y0, y0 + 7), slice(x0, x0 + 7))
                q, k, v = (t[sl].flatten(1, 2)[:, :, 0] for t in (q2, k2, v2))
                a = ((q @ k.transpose(1, 2)) * attn.scale).softmax(-1)  # real queries x keys
                hh, ww = q2[sl].shape[1:3]
                exp_s[sl] = a.mean(1).view(2, hh, ww)
                exp_o[sl] = (a @ v).view(2, hh, ww, 8)
        assert torch.allclose(s_local, exp_s, atol=1e-14)
        assert torch.allclose(o2.view(2, H, W, 8), exp_o, atol=1e-14)


@pytest.mark.parametrize('grad', [False, True])
@pytest.mark.parametrize('padded', [False, True])
def test_fast_attention_and_key_mass_equals_plain(monkeypatch, grad, padded):
    """The fast attention (SDPA + chunked no-grad mass pass, or chunked inference) gives the
    plain outputs, key masses and gradients, in several chunks with short last ones."""
    from mmsgformer.models import fast_paths
    from mmsgformer.models.attention import attention_and_key_mass
    gen = torch.Generator().manual_seed(0)
    Bt, g, Nq, Nk, d = 5, 2, 37, 23, 8
    q, k, v = (torch.randn(Bt, g, n, d, dtype=torch.float64, generator=gen)
               for n in (Nq, Nk, Nk))
    bias = qmask = qcount = None
    if padded:
        keep = torch.rand(Bt, Nk, generator=gen) > 0.3
        keep[:, 0] = True
        bias = torch.zeros(Bt, 1, 1, Nk, dtype=torch.float64).masked_fill(
            ~keep[:, None, None], float('-inf'))
        qmask = (torch.rand(Bt, Nq, generator=gen) > 0.3).double()
        qmask[:, 0] = 1
        qcount = qmask.sum(1, keepdim=True)
    monkeypatch.setattr(fast_paths, '_CHUNK_ELEMS', 2 * g * Nk * 3)  # 2 items x 3 rows
    monkeypatch.setattr(fast_paths, '_CHUNK_INFERENCE_ABOVE', 0)
    results = []
    for fn in (attention_and_key_mass, fast_paths.attention_and_key_mass):
        qs, ks, vs = (t.clone().requires_grad_(grad) for t in (q, k, v))
        with torch.set_grad_enabled(grad):
            o, mass = fn(qs, ks, vs, d ** -0.5, bias, qmask, qcount)
        grads = ()
        if grad:
            grads = torch.autograd.grad((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype)
                                         .view_as(o)).sum(), (qs, ks, vs))
        assert not mass.requires_grad
        results.append((o.detach(), mass, grads))
    (o1, m1, g1), (o2, m2, g2) = results
    assert (o1 - o2).abs().max().item() < 1e-13
    assert (m1 - m2).abs().max().item() < 1e-15
    assert m1.sum().item() == pytest.approx(Bt, abs=1e-12)  # each row of probabilities sums to 1
    for a, b in zip(g1, g2):
        assert (a - b).abs().max().item() < 1e-12


def test_chunked_coarse_branch_equals_full(monkeypatch):
    """Large-input inference evaluates the coarse branch in query chunks: same outputs/map."""
    from mmsgformer.models import fast_paths
    torch.manual_seed(0)
    attn = HybridScaleAttention(32, 4, 4).double().eval()
    y = torch.randn(2, 20 * 28, 32, dtype=torch.float64)
    with torch.no_grad():
        o_full, s_full = attn.coarse_branch(y, attn.q1(y), 20, 28)
        monkeypatch.setattr(fast_paths, '_CHUNK_INFERENCE_ABOVE', 64)
        monkeypatch.setattr(fast_paths, '_CHUNK_ELEMS', 700)  # several chunks, a short last one
        o_chunk, s_chunk = attn.coarse_branch(y, attn.q1(y), 20, 28)
    assert torch.allclose(o_full, o_chunk, atol=1e-14, rtol=0)
    assert torch.allclose(s_full, s_chunk, atol=1e-15, rtol=0)
    assert s_full.shape == (2, 20, 28)


def _weighted_loss(outs):
    return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum()
               for o in outs)


@pytest.mark.parametrize('size', [(64, 80), (224, 224)])
def test_fast_path_training_equals_plain_path(size):
    """float64, train mode: the fast paths (SDPA attention, recomputed FFN / stem / downsampling
    activations, fused projections) give the plain path's outputs, maps and gradients."""
    torch.manual_seed(0)
    arch = dict(TINY) if size == (64, 80) else dict(MICRO)
    plain = SGFormer(arch=arch, sga_impl='auto', fast_path=False).double().train()
    plain.init_weights()
    fast = SGFormer(arch=arch, sga_impl='auto').double().train()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    results = []
    for m in (plain, fast):
        xi = x.clone().requires_grad_(True)
        outs, records = m(xi, return_significance=True)
        _weighted_loss(outs).backward()
        results.append(([o.detach() for o in outs], [r.significance for r in records], xi.grad,
                        {k: p.grad.clone() for k, p in m.named_parameters()}))
    (o1, s1, gx1, g1), (o2, s2, gx2, g2) = results
    for a, b in zip(o1 + s1, o2 + s2):
        assert (a - b).abs().max().item() < 1e-11
    assert (gx1 - gx2).abs().max().item() < 1e-10
    assert set(g1) == set(g2)
    for k in g1:
        assert (g1[k] - g2[k]).abs().max().item() < 1e-9 * (1 + g1[k].abs().max().item()), k
    assert g1['patch_embed1.conv.2.bn.weight'].abs().sum() > 0


def test_fast_path_inference_equals_plain_path():
    """float64 eval: fused projections and image chunks (batch of 6 > 4) change nothing."""
    torch.manual_seed(0)
    plain = tiny(fast_path=False).double().eval()
    plain.init_weights()
    fast = tiny().double().eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(6, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(plain(x), fast(x)):
            assert (a - b).abs().max().item() < 1e-12


def _saved_bytes(model, x) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _weighted_loss(model(x))
    return sum(seen.values())


def test_fast_path_saves_less_for_backward():
    """The training fast path stores far less for backward than the plain path (no attention
    probabilities, no GELU input/output of the FFN, no normalized stem maps)."""
    torch.manual_seed(0)
    plain = SGFormer(arch=dict(MICRO), fast_path=False).train()
    fast = SGFormer(arch=dict(MICRO)).train()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 224, 224)
    saved_plain, saved_fast = _saved_bytes(plain, x), _saved_bytes(fast, x)
    assert saved_fast < 0.6 * saved_plain, (saved_fast, saved_plain)


def _gradcheck_ffn_tail(batch: int, H: int, W: int, seed: int = 0) -> None:
    """float64 gradcheck of the FFN tail (4 hidden channels, 3 out) with every input needing a
    gradient, only ``z`` (frozen parameters), and only the parameters: the written-out backward
    skips what is not needed."""
    from mmsgformer.models.fast_paths import _FFNTail
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_(True)

    z, dww, dwb, w2, b2 = rand(batch, H * W, 4), rand(4, 1, 3, 3), rand(4), rand(3, 4), rand(3)
    params = (dww, dwb, w2, b2)
    assert torch.autograd.gradcheck(lambda *a: _FFNTail.apply(a[0], H, W, *a[1:]), (z, ) + params)
    assert torch.autograd.gradcheck(
        lambda z: _FFNTail.apply(z, H, W, *(p.detach() for p in params)), (z, ))
    assert torch.autograd.gradcheck(lambda *a: _FFNTail.apply(z.detach(), H, W, *a), params)


def test_fast_path_recompute_functions_gradcheck(monkeypatch):
    """float64 gradcheck of the two recomputing autograd functions; the conv link also one image
    at a time (large batches), with the whole batch's output."""
    from mmsgformer.models import fast_paths
    from mmsgformer.models.fast_paths import _NormActConv
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_(True)

    _gradcheck_ffn_tail(1, 2, 3)
    _gradcheck_ffn_tail(2, 3, 2)
    x, gw, gb, cw = rand(1, 4, 3, 4), rand(4), rand(4), rand(4, 1, 3, 3)
    assert torch.autograd.gradcheck(
        lambda x, gw, gb, cw: _NormActConv.apply(x, gw, gb, 1e-5, cw, 2, 1, 4), (x, gw, gb, cw))
    # a batch of 2, a channels-last input, and only some inputs needing a gradient (the stem's
    # image; frozen parameters): the written-out backward skips the rest
    image = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=gen).to(
        memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(
        lambda gw, gb, cw: _NormActConv.apply(image, gw, gb, 1e-5, cw, 1, 1, 1),
        (gw, gb, rand(3, 4, 3, 3)))
    assert torch.autograd.gradcheck(
        lambda x: _NormActConv.apply(x, gw.detach(), gb.detach(), 1e-5, cw.detach(), 2, 1, 4),
        (image.clone().requires_grad_(True), ))
    whole = _NormActConv.apply(image, gw, gb, 1e-5, cw, 2, 1, 4)
    monkeypatch.setattr(fast_paths, '_NORM_ACT_SPLIT_ELEMS', 1)
    assert fast_paths._norm_act_images(image) == [slice(0, 1), slice(1, 2)]
    per_image = _NormActConv.apply(image, gw, gb, 1e-5, cw, 2, 1, 4)
    assert per_image.is_contiguous(memory_format=torch.channels_last)
    assert (per_image - whole).abs().max().item() < 1e-12
    assert torch.autograd.gradcheck(
        lambda x, gw, gb, cw: _NormActConv.apply(x, gw, gb, 1e-5, cw, 2, 1, 4),
        (image.clone().requires_grad_(True), gw, gb, cw))
    assert torch.autograd.gradcheck(
        lambda gw, gb, cw: _NormActConv.apply(image, gw, gb, 1e-5, cw, 1, 1, 1),
        (gw, gb, rand(3, 4, 3, 3)))


def test_ffn_bands_cover_every_row_once(monkeypatch):
    """Small maps run as one piece; large ones per image in bands of equal height (at least one
    row) that cover every row of every image once."""
    from mmsgformer.models.fast_paths import ffn_bands
    from mmsgformer.models import fast_paths
    assert ffn_bands(8, 28, 28, 512) == [(slice(0, 8), 0, 28)]  # stage 2 at 224: as before
    assert ffn_bands(8, 56, 56, 256) == [(slice(i, i + 1), 0, 56) for i in range(8)]
    pieces = ffn_bands(2, 200, 336, 256)  # stage 1 at 800x1344
    assert {(p[0].start, p[0].stop) for p in pieces} == {(0, 1), (1, 2)}
    for image in (0, 1):
        bands = [(r0, r1) for i, r0, r1 in pieces if i.start == image]
        assert bands[0][0] == 0 and bands[-1][1] == 200
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
        heights = {r1 - r0 for r0, r1 in bands}
        assert max(heights) - min(heights) <= max(heights) // 2 and len(bands) > 1
        assert max(heights) * 336 * 256 <= 2 * fast_paths._BAND_ELEMS
    monkeypatch.setattr(fast_paths, '_MLP_SPLIT_ELEMS', 1)
    monkeypatch.setattr(fast_paths, '_BAND_ELEMS', 1)  # narrower than a row: one row a band
    assert ffn_bands(1, 3, 4, 8) == [(slice(0, 1), 0, 1), (slice(0, 1), 1, 2),
                                     (slice(0, 1), 2, 3)]


@pytest.mark.parametrize('batch,H,W,rows', [(1, 7, 5, 2), (3, 9, 4, 1), (2, 6, 3, 6)])
def test_ffn_in_bands_equals_plain_path(monkeypatch, batch, H, W, rows):
    """The FFN in bands of rows: float32 and bf16-autocast inference (fc1 in bands too, its rows
    above a band taken from the band before) bitwise the plain path's; float64 training outputs
    and every gradient equal to the plain path's (the bands' input gradients overlap at their
    edges and are summed)."""
    from mmsgformer.models import fast_paths
    from mmsgformer.models.blocks import Mlp
    torch.manual_seed(0)
    C = 4
    monkeypatch.setattr(fast_paths, '_MLP_SPLIT_ELEMS', 1)
    monkeypatch.setattr(fast_paths, '_BAND_ELEMS', rows * W * 4 * C)
    assert len(fast_paths.ffn_bands(batch, H, W, 4 * C)) == batch * -(-H // rows)
    mlp = Mlp(C, 4 * C)
    x = torch.randn(batch, H * W, C)
    for autocast in (False, True):
        mlp.fast_path = True
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            fast = mlp(x, H, W)
            mlp.fast_path = False
            plain = mlp(x, H, W)
        assert fast.dtype == (torch.bfloat16 if autocast else torch.float32)
        assert torch.equal(fast, plain)
    mlp.double()
    x = x.double()
    weights = torch.linspace(-1, 1, x.numel(), dtype=torch.float64).view_as(x)
    results = []
    for fast_path in (False, True):
        mlp.fast_path = fast_path
        mlp.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = mlp(xi, H, W)
        (out * weights).sum().backward()
        results.append([out.detach(), xi.grad] + [p.grad.clone() for p in mlp.parameters()])
    for a, b in zip(*results):
        assert (a - b).abs().max().item() < 1e-12 * (1 + a.abs().max().item())


def test_ffn_tail_in_bands_gradcheck(monkeypatch):
    """float64 gradcheck of the FFN tail in bands of two rows (edge and inner bands, a short
    last one, two images), also with only z or only the parameters needing a gradient."""
    from mmsgformer.models import fast_paths
    monkeypatch.setattr(fast_paths, '_MLP_SPLIT_ELEMS', 1)
    monkeypatch.setattr(fast_paths, '_BAND_ELEMS', 2 * 3 * 4)
    assert [p[1:] for p in fast_paths.ffn_bands(2, 5, 3, 4)] == [(0, 2), (2, 4), (4, 5)] * 2
    _gradcheck_ffn_tail(2, 5, 3)


def _backward_node_names(outs) -> set:
    """Names of every autograd node reachable from ``outs``."""
    names, seen = set(), set()
    stack = [o.grad_fn for o in outs]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def test_fast_path_training_graph_has_no_view_rewrites():
    """No in-place write into a view on the training fast path: each would add a CopySlices node,
    which clones the whole gradient in backward (the plain path's FFN keeps one, on purpose)."""
    torch.manual_seed(0)
    fast = SGFormer(arch=dict(MICRO)).train()
    plain = SGFormer(arch=dict(MICRO), fast_path=False).train()
    x = torch.randn(1, 3, 64, 96)
    assert 'CopySlices' not in _backward_node_names(fast(x))
    assert 'CopySlices' in _backward_node_names(plain(x))  # the check sees them


def test_conv_layout_is_official_only_where_the_official_code_runs():
    """The convs of the stem and of the downsamplings run channels-last in training (faster
    backward) and in inference at sizes the official code cannot run; in inference at official
    sizes (images with sides multiples of 224, maps multiples of 14), and on the plain path, in
    the official NCHW layout. float64 outputs agree either way."""
    from mmsgformer.models import fast_paths
    torch.manual_seed(0)
    model = SGFormer(arch=dict(MICRO)).double()
    stem, down = model.stem, model.stages[1].downsample
    cases = [(stem, torch.zeros(1, 3, 224, 448), torch.zeros(1, 3, 224, 230),
              fast_paths.STEM_OFFICIAL_MULTIPLE),
             (down, torch.zeros(1, 8, 28, 56), torch.zeros(1, 8, 28, 57),
              fast_paths.DOWNSAMPLE_OFFICIAL_MULTIPLE)]
    for module, official, other, multiple in cases:
        def layout(x):
            return fast_paths.conv_memory_format(module, x, multiple)
        assert layout(official) == layout(other) == torch.channels_last
        with torch.no_grad():
            assert layout(official) == torch.contiguous_format
            assert layout(other) == torch.channels_last
            model.set_fast_path(False)
            assert layout(other) == torch.contiguous_format
        assert layout(other) == torch.contiguous_format
        model.set_fast_path(True)
    for module, x in ((stem, torch.randn(2, 3, 33, 47, dtype=torch.float64)),
                      (down, torch.randn(2, down.conv1.c.in_channels, 9, 13,
                                         dtype=torch.float64))):
        train_tokens = module(x)[0]
        with torch.no_grad():
            eval_tokens = module(x)[0]
            model.set_fast_path(False)
            plain_tokens = module(x)[0]
            model.set_fast_path(True)
        assert train_tokens.is_contiguous() and eval_tokens.is_contiguous()
        assert (train_tokens.detach() - eval_tokens).abs().max().item() < 1e-12
        assert (plain_tokens - eval_tokens).abs().max().item() < 1e-12


def test_stem_trains_in_nchw_where_its_channels_last_backward_is_slower(monkeypatch):
    """The stem's dense 3x3 convs train channels-last on CPUs with AVX-512 and in NCHW without
    (oneDNN's channels-last backward is slower there); the downsampling's 1x1 and depthwise
    convs train channels-last either way. Tokens and gradients agree in float64."""
    from mmsgformer.models import fast_paths
    torch.manual_seed(0)
    model = SGFormer(arch=dict(MICRO)).double()
    stem = model.stem
    x = torch.randn(2, 3, 33, 47, dtype=torch.float64)
    results = {}
    for channels_last in (True, False):
        monkeypatch.setattr(fast_paths, '_dense_convs_channels_last_in_training',
                            lambda: channels_last)
        expected = torch.channels_last if channels_last else torch.contiguous_format
        assert fast_paths.conv_memory_format(stem, x, 32, dense=True) == expected
        assert fast_paths.conv_memory_format(stem, x, 32) == torch.channels_last
        with torch.no_grad():  # inference keeps its own rule
            assert fast_paths.conv_memory_format(stem, x, 32, dense=True) == torch.channels_last
        tokens = stem(x)[0]
        grads = torch.autograd.grad(tokens.square().sum(), list(stem.parameters()))
        results[channels_last] = (tokens.detach(), grads)
    (t_cl, g_cl), (t_nchw, g_nchw) = results[True], results[False]
    assert (t_cl - t_nchw).abs().max().item() < 1e-12
    for a, b in zip(g_cl, g_nchw):
        assert (a - b).abs().max().item() < 1e-10 * (1 + b.abs().max().item())


def test_groupnorm_in_place_on_channels_last_maps_without_gradient():
    """Without a gradient, the GroupNorm (and GELU) of a channels-last conv output is computed in
    the map itself and equals the modules' result (float64; float32 within GroupNorm's own
    rounding, on a map with a large mean). NCHW maps (the official sizes), a gradient, the plain
    path, reduced precision and other group counts keep the modules."""
    from mmsgformer.models.fast_paths import norm_act_inplace
    torch.manual_seed(0)
    norm = nn.GroupNorm(1, 8)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        norm.to(dtype)
        x = (torch.randn(3, 8, 9, 13, dtype=dtype) * 3 + 5).contiguous(
            memory_format=torch.channels_last)
        for act in (True, False):
            expect = norm(x)
            expect = nn.functional.gelu(expect) if act else expect
            with torch.no_grad():
                out = norm_act_inplace(norm, x.clone(), act)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert (out - expect).abs().max().item() < tol
    norm.float()
    x = torch.randn(2, 8, 9, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = x.clone()
        assert norm_act_inplace(norm, y, True).data_ptr() == y.data_ptr()  # in place
        assert norm_act_inplace(norm, x.contiguous(), True) is None  # NCHW: official rounding
        assert norm_act_inplace(nn.GroupNorm(2, 8), x.clone(), True) is None
        assert norm_act_inplace(norm, x.clone().bfloat16(), True) is None
        norm.fast_path = False
        assert norm_act_inplace(norm, x.clone(), True) is None
        norm.fast_path = True
    assert norm_act_inplace(norm, x.clone(), True) is None  # autograd on, trainable norm
    norm.requires_grad_(False)
    assert norm_act_inplace(norm, x.clone(), True) is not None  # a frozen stage


def test_stem_inference_writes_the_middle_conv_into_the_map_it_reads(monkeypatch):
    """Inference at sizes the official code cannot run: the stem's middle conv runs in bands of
    rows written back into the first conv's output, one image at a time. Outputs equal the plain
    path's (float64; float32 within GroupNorm's rounding) for bands of one and of three rows, odd
    sizes and several images; a gradient, NCHW input (official sizes), the plain path and
    reduced precision keep the modules."""
    from mmsgformer.models import fast_paths
    from mmsgformer.models.blocks import ConvStem, conv_gn_chain
    torch.manual_seed(0)
    stem = ConvStem(8).eval()
    for m in stem.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    units = [stem.conv[0], stem.conv[2], stem.conv[4]]

    def set_fast(enabled):
        for m in stem.modules():
            m.fast_path = enabled
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        stem.to(dtype)
        for shape, band_rows in (((1, 3, 33, 47), 1), ((3, 3, 50, 30), 3), ((2, 3, 3, 9), 1),
                                 ((1, 3, 2, 2), 1), ((1, 3, 20, 30), 2)):
            x = (torch.randn(shape, dtype=dtype) * 3 + 2).contiguous(
                memory_format=torch.channels_last)
            if shape[2] == 20:  # an image viewed from HWC data: batch stride 3, oneDNN's NCHW
                x = (torch.randn(shape[2:] + (3, ), dtype=dtype) * 3 + 2).permute(2, 0, 1)[None]
            width = -(-shape[3] // 2)
            monkeypatch.setattr(fast_paths, '_STEM_BAND_ELEMS', band_rows * 8 * width)
            with torch.no_grad():
                fast = fast_paths.stem_inference(units, x)
                tokens = stem(x)[0]
                set_fast(False)
                assert fast_paths.stem_inference(units, x) is None
                plain_map, plain = conv_gn_chain(units, x), stem(x)[0]
                set_fast(True)
            assert fast.is_contiguous(memory_format=torch.channels_last)
            assert (fast - plain_map).abs().max().item() < tol
            assert (tokens - plain).abs().max().item() < tol
    stem.float()
    x = torch.randn(1, 3, 20, 24).contiguous(memory_format=torch.channels_last)
    assert fast_paths.stem_inference(units, x) is None  # autograd on, trainable stem
    with torch.no_grad():
        assert fast_paths.stem_inference(units, x.contiguous()) is None  # NCHW: official rounding
        assert fast_paths.stem_inference(units, x.bfloat16()) is None
        with torch.autocast('cpu', dtype=torch.bfloat16):  # the convs would return bfloat16
            assert fast_paths.stem_inference(units, x) is None
            assert stem(x)[0].shape == (1, 30, 8)
    stem.requires_grad_(False)
    assert fast_paths.stem_inference(units, x) is not None  # a frozen stem


def test_inference_cache_follows_the_parameters_and_the_size():
    """Inference keeps the resized position table and the concatenated projection weights on the
    module; a new size, a parameter changed in place (a checkpoint load) or replaced computes
    them afresh. Nothing is kept while autograd records, nor on the plain path."""
    from mmsgformer.models.fast_paths import inference_cache
    torch.manual_seed(0)
    model = SGFormer(arch=dict(MICRO)).eval()
    with torch.no_grad():
        first = model._stage_pos_embed(9, 13)
        assert model._stage_pos_embed(9, 13) is first  # kept
        other = model._stage_pos_embed(10, 13)
        assert other.shape[1] == 130 and model._stage_pos_embed(9, 13) is not first
        again = model._stage_pos_embed(9, 13)
        model.pos_embed.mul_(2)  # in place, as load_state_dict does
        doubled = model._stage_pos_embed(9, 13)
        assert doubled is not again
        torch.testing.assert_close(doubled, 2 * again)
        model.pos_embed = nn.Parameter(model.pos_embed.detach().clone())  # replaced
        assert model._stage_pos_embed(9, 13) is not doubled
        model.set_fast_path(False)
        assert model._stage_pos_embed(9, 13) is not model._stage_pos_embed(9, 13)
        model.set_fast_path(True)
    with_grad = model._stage_pos_embed(9, 13)  # training: part of the graph, never kept
    assert with_grad.requires_grad and model._stage_pos_embed(9, 13) is not with_grad
    calls = []
    weight = nn.Parameter(torch.ones(3))
    with torch.no_grad():
        for _ in range(3):
            inference_cache(model, 'probe', (), [weight], lambda: calls.append(1) or len(calls))
    assert calls == [1]
    for _ in range(2):
        inference_cache(model, 'probe', (), [weight], lambda: calls.append(1) or len(calls))
    assert calls == [1, 1, 1]


def test_rank_tokens_column_listing_is_an_order_over_row_major_tokens():
    S = torch.tensor([[[3., 1., 2.], [0., 5., 4.]]])  # (1, 2, 3)
    order_row, order_col = rank_tokens(S)
    assert order_row.tolist() == [[3, 1, 2, 0, 5, 4]]
    assert order_col.tolist() == [[3, 1, 2, 0, 5, 4]]  # distinct values: same ranking
    idx = col_to_row_index(2, 3, torch.device('cpu'))
    assert idx.tolist() == [0, 3, 1, 4, 2, 5]
    # with ties the column listing orders tied tokens column-major (as the official gather)
    S = torch.zeros(1, 2, 2)
    _, order_col = rank_tokens(S)
    tokens = torch.arange(4.).view(1, 4, 1)
    col_listing = tokens.view(1, 2, 2, 1).transpose(1, 2).reshape(1, 4, 1)
    pi = torch.sort(S.transpose(1, 2).reshape(1, 4), dim=1).indices
    expect = torch.gather(col_listing, 1, pi.unsqueeze(-1))
    assert torch.equal(torch.gather(tokens, 1, order_col.unsqueeze(-1)), expect)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_sga_impls_agree(dtype):
    from mmsgformer.ops import op_available
    torch.manual_seed(0)
    ref = tiny(sga_impl='reference').to(dtype).eval()
    ref.init_weights()
    ref = ref.to(dtype)
    x = torch.randn(1, 3, 64, 72, dtype=dtype)
    impls = ['auto'] + (['op'] if op_available() else [])
    with torch.no_grad():
        expected = ref(x)
        for impl in impls:
            model = tiny(sga_impl=impl).to(dtype).eval()
            model.load_state_dict(ref.state_dict())
            for a, b in zip(model(x), expected):
                tol = 1e-12 if dtype == torch.float64 else 1e-4
                assert (a - b).abs().max().item() < tol, impl


def test_sga_uses_segment_layout_and_aggregation_params():
    attn = SelfGuidedAttention(16, 2, 4, sga_impl='reference')
    w, b = attn.aggregation_params()
    assert w.shape == (49 + 14 + 7, ) and b.shape == (3, )
    lay = segment_layout(28 * 28, 4)
    assert lay.counts == (4, 28, 28)
    y = torch.randn(1, 28 * 28, 16)
    out, none = attn(y, 28, 28, torch.rand(1, 28, 28))
    assert none is None and out.shape == y.shape
    with pytest.raises(RuntimeError, match='significance'):
        attn(y, 28, 28, None)


# --------------------------------------------------------------------------- training features
def test_drop_path_is_linear_over_blocks():
    model = tiny(drop_path_rate=0.3)
    probs = []
    for i in range(4):
        for blk in getattr(model, f'block{i + 1}'):
            probs.append(getattr(blk.drop_path, 'drop_prob', 0.))
    assert probs == pytest.approx(np.linspace(0, 0.3, sum(TINY['depths'])).tolist())


def test_frozen_stages_survive_train_and_optimizer_step():
    torch.manual_seed(0)
    model = tiny(frozen_stages=2, drop_path_rate=0.1)
    model.init_weights()
    model.train()
    frozen = ['pos_embed', 'patch_embed1.', 'block1.', 'norm1.', 'patch_embed2.', 'block2.',
              'norm2.']
    for name, p in model.named_parameters():
        assert p.requires_grad == (not any(name.startswith(f) for f in frozen)), name
    assert not model.block2.training and not model.patch_embed1.training
    assert model.block3.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 64)))
    loss.backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (not any(k.startswith(f) for f in frozen)), k


def test_frozen_stage_zero_freezes_stem_and_pos_embed_only():
    model = tiny(frozen_stages=0)
    model.train()
    assert not model.pos_embed.requires_grad
    assert not any(p.requires_grad for p in model.patch_embed1.parameters())
    assert all(p.requires_grad for p in model.block1.parameters())


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    ref = tiny(drop_path_rate=0.).double()
    ref.init_weights()
    cpm = tiny(with_cp=True).double()
    cpm.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 80, dtype=torch.float64)
    results = []
    for m in (ref, cpm):
        xi = x.clone().requires_grad_(True)
        outs = m(xi)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum()
                   for o in outs)
        loss.backward()
        results.append(([o.detach() for o in outs], xi.grad,
                        {k: p.grad.clone() for k, p in m.named_parameters()}))
    (o1, gx1, g1), (o2, gx2, g2) = results
    for a, b in zip(o1, o2):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(gx1, gx2, atol=1e-12)
    assert set(g1) == set(g2)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-10), k
    assert g1['block1.1.attn.f1.weight'].abs().sum() > 0  # gradients reach the aggregation


def test_float64_gradients_equal_official_path():
    """Backward through the in-place/fused paths equals autograd through the official path."""
    arch = MICRO
    sd = make_official_state_dict(arch['embed_dims'], arch['num_heads'], arch['depths'], seed=5)
    sd = {k: v.clone().requires_grad_(True) for k, v in backbone_part(sd).items()}
    model = SGFormer(arch=dict(arch), sga_impl='auto').double().train()
    model.load_state_dict({k: v.detach() for k, v in sd.items()})
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(1, c, s, s, dtype=torch.float64, generator=gen)
               for c, s in zip(arch['embed_dims'], (56, 28, 14, 7))]
    ref, _ = official_forward(sd, xa, arch['num_heads'], arch['depths'])
    sum((r * w).sum() for r, w in zip(ref, weights)).backward()
    outs = model(xb)
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    assert (xa.grad - xb.grad).abs().max().item() < 1e-8
    grads = dict(model.named_parameters())
    for k, v in sd.items():
        assert (grads[k].grad - v.grad).abs().max().item() < 1e-7 * (1 + v.grad.abs().max()), k


def test_official_init():
    torch.manual_seed(0)
    model = SGFormer(arch=dict(TINY, embed_dims=[32, 32, 64, 64]), sga_impl='reference')
    model.init_weights()
    # sin-cos table (MAE recipe, numpy float64)
    G, D = 56, 32
    omega = 1. / 10000 ** (np.arange(D // 4, dtype=np.float64) / (D / 4.))
    gw, gh = np.meshgrid(np.arange(G, dtype=np.float64), np.arange(G, dtype=np.float64))

    def e1d(pos):
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([e1d(gw), e1d(gh)], axis=1).astype(np.float32)
    assert np.abs(model.pos_embed.detach().numpy()[0] - table).max() < 1e-6
    w = model.block3[0].attn.kv1.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert w.abs().max().item() <= 2.
    assert torch.all(model.block3[0].attn.kv1.bias == 0)
    sr = model.block1[0].attn.sr.weight  # fan_out = 8*8*32
    assert sr.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)
    dw = model.block3[0].mlp.dwconv.dwconv.weight  # depthwise: fan_out = 9
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    assert torch.all(model.patch_embed1.conv[0].bn.weight == 1)
    assert torch.all(model.norm4.weight == 1) and torch.all(model.norm4.bias == 0)
    # the mixed LayerNorm eps of the official code
    assert model.patch_embed1.norm.eps == 1e-5 and model.block1[0].attn.norm.eps == 1e-5
    assert model.block1[0].norm1.eps == 1e-6 and model.norm1.eps == 1e-6
    assert isinstance(model.patch_embed1.conv[0].bn, nn.GroupNorm)


def test_pos_embed_resized_by_load_state_dict_hook():
    src = tiny()  # 56x56 table
    dst = tiny(pretrain_img_size=(256, 320))  # 64x80 table
    dst.load_state_dict(src.state_dict())
    assert dst.pos_embed.shape == (1, 64 * 80, 16)
    grid = src.pos_embed.detach().reshape(1, 56, 56, 16).permute(0, 3, 1, 2)
    exp = torch.nn.functional.interpolate(grid, size=(64, 80), mode='bicubic',
                                          align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(dst.pos_embed.detach(), exp, atol=1e-6)


def test_forward_interpolates_pos_embed_for_other_grids():
    model = tiny().eval()
    captured = {}
    model.patch_embed1.register_forward_hook(lambda m, i, o: captured.update(tok=o[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 128))
    assert captured['tok'].shape == (1, 24 * 32, 16)
    resized = model._stage_pos_embed(24, 32)
    assert resized.shape == (1, 24 * 32, 16)
    assert model._stage_pos_embed(56, 56) is model.pos_embed


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='xl'), r"arch='xl'"),
    (dict(arch=dict(embed_dims=[16, 32, 64, 64], num_heads=[2, 2, 4, 4])), 'missing'),
    (dict(arch=dict(TINY, mlp=4)), 'unexpected'),
    (dict(arch=dict(TINY, depths=[2, 3, 2, 1])), r'depths\[1\]=3 must be even'),
    (dict(arch=dict(TINY, num_heads=[2, 2, 3, 4])), r'num_heads\[2\]=3 must be even'),
    (dict(arch=dict(TINY, embed_dims=[16, 30, 64, 64], num_heads=[2, 4, 4, 4])),
     r'embed_dims\[1\]=30 must be divisible'),
    (dict(arch=dict(TINY, depths=[2, 2, 2])), r'4 positive ints'),
    (dict(sga_impl='cuda'), r"sga_impl='cuda'"),
    (dict(out_indices=(0, 4)), 'out_indices'),
    (dict(out_indices=(1, 1)), 'repeats'),
    (dict(out_indices=()), 'out_indices'),
    (dict(out_indices=True), 'out_indices=True'),
    (dict(out_indices=(0, True)), 'entry True'),
    (dict(frozen_stages=5), 'frozen_stages=5'),
    (dict(frozen_stages=-2), 'frozen_stages=-2'),
    (dict(sr_ratios=(8, 4, 3, 1)), 'sr_ratio=3'),
    (dict(sr_ratios=(8, 4, 2, 2)), r'sr_ratios\[3\]=2'),
    (dict(pretrain_img_size=16), 'pretrain_img_size=16'),
    (dict(drop_path_rate=1.5), 'drop_path_rate'),
])
def test_bad_arguments(kwargs, match):
    kwargs.setdefault('arch', dict(TINY))
    with pytest.raises(ValueError, match=match):
        SGFormer(**kwargs)


@pytest.mark.parametrize('x,match', [
    (torch.randn(3, 64, 64), 'must be 4-D'),
    (torch.randn(1, 1, 64, 64), 'must have 3 channels'),
    (torch.randn(1, 3, 31, 64), '>= 32'),
    (torch.randn(1, 3, 64, 16), '>= 32'),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 'dtype torch.uint8'),
])
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        tiny()(x)


def test_fast_path_training_under_bf16_autocast():
    """A bf16 autocast training step runs on the fast path and stays close to the plain one."""
    torch.manual_seed(0)
    plain = tiny(sga_impl='auto', fast_path=False).train()
    plain.init_weights()
    fast = tiny(sga_impl='auto').train()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 96)
    grads = []
    for m in (plain, fast):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = m(x)
            loss = sum((o.float() ** 2).mean() for o in outs)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        assert all(o.dtype == torch.bfloat16 or o.dtype == torch.float32 for o in outs)
    assert torch.isfinite(grads[1]).all()
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0).item()
    assert cos > 0.98, cos


def test_flop_count_of_chunked_inference_equals_unchunked(monkeypatch):
    """The FLOP counter traces the chunked large-input inference path and counts what the
    unchunked one counts (the chunks split the same multiply-adds)."""
    from mmsgformer.analysis.flops import analyze_model
    from mmsgformer.models import fast_paths
    model = SGFormer(arch=dict(MICRO)).eval()
    x = torch.randn(1, 3, 64, 96)
    full = analyze_model(model, (x, ), backbone_name=None).flops
    monkeypatch.setattr(fast_paths, '_CHUNK_INFERENCE_ABOVE', 0)
    monkeypatch.setattr(fast_paths, '_CHUNK_ELEMS', 256)
    assert analyze_model(model, (x, ), backbone_name=None).flops == full
