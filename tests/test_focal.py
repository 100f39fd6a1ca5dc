"""Tests of the Focal Transformer backbone against the official path (tests/official_focal.py).

Small archs and inputs; float64 where numbers are compared with the official model.
Run: ``$PY -m pytest tests/test_focal.py -x -q``.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_focal  # noqa: E402

from mmsgformer.models.focal_attention import (MASKED_LOGIT, focal_geometry,  # noqa: E402
                                               neighbour_offsets)
from mmsgformer.models.focal_transformer import FocalBlock, FocalTransformer  # noqa: E402

TINY = dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
TINY_OFFICIAL = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
# three stages at 112 px (28 -> 14 -> 7 maps): the cheapest setting the official code runs in
TINY3 = dict(embed_dims=16, depths=[1, 1, 1], num_heads=[1, 2, 2])
TINY3_KW = dict(focal_windows=(7, 5, 3))
TINY3_OFFICIAL = dict(embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 2),
                      focal_windows=(7, 5, 3), focal_levels=(2, 2, 2), expand_sizes=(3, 3, 3))
# index buffers the official state dict stores (recomputed here)
BUFFERS = ('relative_position_index', 'valid_ind_rolled', 'relative_position_index_0')


@pytest.fixture(autouse=True, scope='module')
def single_thread():
    """The models here are tiny: one thread avoids OpenMP barrier waits on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial random weights: every parameter N(0, 0.1), norm weights around 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
            if 'norm' in name and name.endswith('weight'):
                p.add_(1.)
    return model


def official_model(img_size: int, **kwargs) -> official_focal.FocalTransformer:
    cfg = dict(TINY_OFFICIAL, num_classes=10)
    cfg.update(kwargs)
    model = randomize_(official_focal.FocalTransformer(img_size=img_size, **cfg))
    # float32 weights (exact in float64), so a float32 checkpoint carries them exactly
    return model.float().double().eval()


def backbone_state(official: torch.nn.Module) -> dict:
    return {k: v for k, v in official.state_dict().items() if not k.startswith('head.')}


def official_reference(official, x):
    """Official stage-4 tokens (normed) and logits."""
    tokens = official.norm(official.stage_outputs(x)[-1])
    return tokens, official(x)


# --------------------------------------------------------------------------- geometry
def test_neighbour_offsets_reproduce_official_rolls():
    off = neighbour_offsets(7, 3)
    assert off.shape == (132, 2)
    cells = [tuple(v) for v in off.tolist()]
    ring = {(y, x) for y in range(-3, 10) for x in range(-3, 10)
            if not (0 <= y < 7 and 0 <= x < 7)}
    assert set(cells) == ring and len(ring) == 120
    dup = {c for c in cells if cells.count(c) == 2}
    expected = ({(3, x) for x in (7, 8, 9, -3, -2, -1)} | {(y, 3) for y in (7, 8, 9, -3, -2, -1)})
    assert dup == expected
    # first roll is (-3, -3): rolled cell (i, j) is token (i + 3, j + 3); kept cells row-major
    assert cells[:3] == [(3, 7), (3, 8), (3, 9)]
    # order equals the official valid_ind_rolled applied to the four rolled windows
    attn = official_focal.WindowAttention(8, 3, (7, 7), 7, 2, 1, pool_method='fc')
    ind = attn.valid_ind_rolled
    roll_of = ind // 49
    i, j = (ind % 49) // 7, (ind % 49) % 7
    shifts = torch.tensor([[-3, -3], [-3, 3], [3, -3], [3, 3]])
    official_cells = torch.stack([i - shifts[roll_of, 0], j - shifts[roll_of, 1]], 1)
    assert torch.equal(official_cells, off)


def test_geometry_official_wraps_masked_masks():
    geo = focal_geometry((14, 14), 7, 3, 3, True, 'official')
    assert geo.expand and geo.num_keys == 49 + 132 + 9 and geo.num_windows == 4
    index = geo.index.view(4, -1)
    # window 0, surroundings slot of offset (-3, -3) (last roll, first kept cell) wraps to (11, 11)
    k = 49 + 99  # roll (+3,+3) starts at slot 99 of the surroundings; its first cell is (-3, -3)
    assert index[0, k].item() == 11 * 14 + 11
    assert geo.mask[:, :181].abs().sum() == 0
    # pooled 3x3 around window (0, 0) of a 2x2 grid: 5 cells outside get -100
    assert geo.mask[0, 181:].tolist() == [-100.] * 4 + [0., 0.] + [-100., 0., 0.]
    masked = focal_geometry((14, 14), 7, 3, 3, True, 'masked')
    assert masked.mask[0, k].item() == MASKED_LOGIT
    # window (0, 0): 69 ring cells above/left of the map + 6 of their duplicates, 5 pooled
    assert (masked.mask[0] == MASKED_LOGIT).sum().item() == 69 + 6 + 5
    # no surroundings when the map is not larger than the window (official at 224, stage 4)
    assert not focal_geometry((7, 7), 7, 3, 1, True, 'official').expand
    assert not focal_geometry((7, 30), 7, 3, 1, True, 'official').expand
    with pytest.raises(ValueError, match='padded_shape'):
        focal_geometry((10, 10), 7, 3, 3, True, 'official', padded_shape=(15, 14))
    with pytest.raises(ValueError, match='border_mode'):
        focal_geometry((10, 10), 7, 3, 3, True, 'cyclic')


# --------------------------------------------------------------------------- arch / params
@pytest.mark.parametrize('alias,dims,depths,heads', [
    ('t', 96, [2, 2, 6, 2], [3, 6, 12, 24]), ('tiny', 96, [2, 2, 6, 2], [3, 6, 12, 24]),
    ('s', 96, [2, 2, 18, 2], [3, 6, 12, 24]), ('Small', 96, [2, 2, 18, 2], [3, 6, 12, 24]),
    ('b', 128, [2, 2, 18, 2], [4, 8, 16, 32]), ('base', 128, [2, 2, 18, 2], [4, 8, 16, 32]),
])
def test_arch_zoo(alias, dims, depths, heads):
    parsed = FocalTransformer._parse_arch(alias)
    assert parsed == dict(embed_dims=dims, depths=depths, num_heads=heads)


def test_custom_arch_dict():
    model = FocalTransformer(arch=TINY)
    assert model.num_features == [16, 32, 64, 128]
    assert [len(layer.blocks) for layer in model.layers] == [1, 1, 2, 1]
    assert [layer.blocks[0].attn.num_heads for layer in model.layers] == [1, 2, 2, 4]


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('arch,official_224,head,nb_stage4', [
    ('tiny', 28_880_380, 768 * 1000 + 1000, 2 * 24 * 49 * 132),
    ('small', 51_141_940, 768 * 1000 + 1000, 2 * 24 * 49 * 132),
    ('base', 89_815_400, 1024 * 1000 + 1000, 2 * 32 * 49 * 132),
])
def test_param_counts_size_independent(arch, official_224, head, nb_stage4):
    """Official count minus the head, plus the stage-4 neighbour tables that the official model
    only has when built above 224 (design F§3: Focal-T at 256/384 = 29,190,844)."""
    with torch.device('meta'):
        model = FocalTransformer(arch=arch, out_indices=(3, ))
        dense = FocalTransformer(arch=arch)
    assert _num_params(model) == official_224 - head + nb_stage4
    if arch == 'tiny':
        assert official_224 + nb_stage4 == 29_190_844
    dims = model.num_features
    assert _num_params(dense) - _num_params(model) == 2 * sum(dims[:3])


def test_official_reference_param_counts():
    """The test-side official model has the official counts of design F§3 (224: 28,880,380)."""
    assert _num_params(official_focal.FocalTransformer(img_size=224)) == 28_880_380
    with torch.device('meta'):
        ours = FocalTransformer('tiny', use_conv_embed=True, out_indices=(3, ))
    official_conv = 30_825_244
    assert _num_params(ours) == official_conv - 769_000 + 2 * 24 * 49 * 132


# --------------------------------------------------------------------------- official numerics
@pytest.mark.parametrize('img_size', [224, 256])
def test_matches_official_float64(img_size):
    official = official_model(img_size)
    model = FocalTransformer(arch=TINY, out_indices=(3, )).double().eval()
    result = model.load_state_dict(backbone_state(official), strict=False)
    expected_missing = ([] if img_size == 256 else
                        ['layers.3.blocks.0.attn.relative_position_bias_table_to_neighbors'])
    assert result.missing_keys == expected_missing and result.unexpected_keys == []
    x = torch.randn(1, 3, img_size, img_size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens, logits = official_reference(official, x)
        out, = model(x)
    ours = out.flatten(2).transpose(1, 2)
    assert out.shape == (1, 128, img_size // 32, img_size // 32)
    assert (ours - tokens).abs().max().item() < 1e-8
    head_logits = official.head(ours.mean(1))
    assert (head_logits - logits).abs().max().item() < 1e-8
    # the biases matter: zeroing the neighbour tables changes the result
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'to_neighbors' in name:
                p.zero_()
        changed, = model(x)
    assert (changed - out).abs().max().item() > 1e-4


@pytest.mark.parametrize('pool_method', ['mean', 'max', 'conv', 'none'])
def test_pool_methods_match_official(pool_method):
    official = official_model(112, **TINY3_OFFICIAL, pool_method=pool_method)
    model = FocalTransformer(arch=TINY3, **TINY3_KW, out_indices=(2, ), pool_method=pool_method)
    model = model.double().eval()
    result = model.load_state_dict(backbone_state(official), strict=False)
    assert result.unexpected_keys == []
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        tokens, _ = official_reference(official, x)
        out, = model(x)
    assert (out.flatten(2).transpose(1, 2) - tokens).abs().max().item() < 1e-8


def test_conv_embed_matches_official():
    official = official_model(112, **TINY3_OFFICIAL, use_conv_embed=True)
    model = FocalTransformer(arch=TINY3, **TINY3_KW, out_indices=(2, ), use_conv_embed=True)
    model = model.double().eval()
    model.load_state_dict(backbone_state(official), strict=False)
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        tokens, _ = official_reference(official, x)
        out, = model(x)
    assert (out.flatten(2).transpose(1, 2) - tokens).abs().max().item() < 1e-8


def test_non_multiple_of_window_matches_official():
    """118 px: 29x29 -> 14 -> 7 maps, zero padding to 35 in stage 1 (unmasked)."""
    official = official_model(118, **TINY3_OFFICIAL)
    model = FocalTransformer(arch=TINY3, **TINY3_KW, out_indices=(2, )).double().eval()
    model.load_state_dict(backbone_state(official), strict=False)
    x = torch.randn(1, 3, 118, 118, dtype=torch.float64)
    with torch.no_grad():
        tokens, _ = official_reference(official, x)
        out, = model(x)
    assert out.shape[-2:] == (7, 7)
    assert (out.flatten(2).transpose(1, 2) - tokens).abs().max().item() < 1e-8


# --------------------------------------------------------------------------- loading
def test_official_checkpoint_loading(tmp_path):
    official = official_model(224)
    state = {k: v.float() for k, v in official.state_dict().items()}
    assert any(k.endswith('valid_ind_rolled') for k in state)
    path = str(tmp_path / 'focal_official.pth')
    torch.save({'model': state, 'epoch': 299}, path)
    model = FocalTransformer(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    own = model.state_dict()
    for k, v in state.items():
        if k in own:
            assert torch.equal(own[k], v), k
    report = model.load_pretrained(path)
    assert report['missing'] == [
        'layers.3.blocks.0.attn.relative_position_bias_table_to_neighbors', 'norm0.weight',
        'norm0.bias', 'norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias'
    ]
    assert report['unexpected'] == []
    num_buffers = sum(k.rsplit('.', 1)[-1] in BUFFERS for k in state)
    assert len(report['recomputed']) == num_buffers == 5 * 2 + 4
    assert len(report['loaded']) == len(state) - 2 - num_buffers  # minus head, buffers
    # the stage-4 neighbour table keeps the official init (trunc-normal std 0.02)
    nb = own['layers.3.blocks.0.attn.relative_position_bias_table_to_neighbors']
    assert 0.01 < nb.std().item() < 0.03 and nb.abs().max().item() <= 2.
    # strict load of an official state dict (index buffers dropped by the pre-hook)
    strict_model = FocalTransformer(arch=TINY, out_indices=(3, ))
    with pytest.raises(RuntimeError, match='to_neighbors'):
        strict_model.load_state_dict({k: v for k, v in state.items() if 'head' not in k})
    res = strict_model.load_state_dict({k: v for k, v in state.items() if 'head' not in k},
                                       strict=False)
    assert res.unexpected_keys == [] and len(res.missing_keys) == 1


def test_state_dict_keys_are_official():
    official = official_focal.FocalTransformer(img_size=256, **TINY_OFFICIAL)
    off_keys = {k for k in official.state_dict()
                if not k.startswith('head.') and k.rsplit('.', 1)[-1] not in BUFFERS}
    ours = FocalTransformer(arch=TINY, out_indices=(3, ))
    assert set(ours.state_dict()) == off_keys
    for k, v in ours.state_dict().items():
        assert v.shape == official.state_dict()[k].shape, k


def test_official_init():
    model = FocalTransformer(arch=TINY)
    model.init_weights()
    blk = model.layers[0].blocks[0]
    assert blk.attn.relative_position_bias_table.abs().sum() == 0
    assert blk.norm1.weight.eq(1).all() and blk.attn.qkv.bias.eq(0).all()
    # the fc-pool mean init (1/49) is overwritten by the Linear init, as officially
    w = model.layers[2].blocks[0].pool_layers[0].weight
    assert not torch.allclose(w, torch.full_like(w, 1 / 49))
    assert model.layers[0].blocks[0].attn.qkv.weight.abs().max() <= 2.


# --------------------------------------------------------------------------- shapes / borders
@pytest.mark.parametrize('border_mode', ['official', 'masked'])
@pytest.mark.parametrize('hw,expected', [
    ((333, 517), [(83, 129), (41, 64), (20, 32), (10, 16)]),
    ((800, 1333), [(200, 333), (100, 166), (50, 83), (25, 41)]),
    ((32, 45), [(8, 11), (4, 5), (2, 2), (1, 1)]),
])
def test_output_shapes_any_size(border_mode, hw, expected):
    arch = dict(embed_dims=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
    model = FocalTransformer(arch=arch, border_mode=border_mode).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    assert [tuple(o.shape) for o in outs] == [(1, 8 * 2**i, h, w)
                                              for i, (h, w) in enumerate(expected)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert model.stage_sizes(*hw) == expected


@pytest.mark.parametrize('border_mode', ['official', 'masked'])
def test_masked_mode_is_padding_independent(border_mode):
    """Real-token outputs of a block with 10x12 real tokens: minimal padding (14x14) vs. two
    more padded window rows/cols (28x28). Equal in 'masked' mode, different in 'official'."""
    torch.manual_seed(0)
    block = randomize_(FocalBlock(16, 2, focal_window=3)).double().eval()
    x = torch.randn(2, 10 * 12, 16, dtype=torch.float64)
    outs = []
    for padded in ((14, 14), (28, 21), (21, 28)):
        geo = focal_geometry((10, 12), 7, 3, 3, True, border_mode, padded_shape=padded)
        with torch.no_grad():
            outs.append(block(x, (10, 12), geo))
    diff = max((o - outs[0]).abs().max().item() for o in outs[1:])
    if border_mode == 'masked':
        assert diff < 1e-12
    else:
        assert diff > 1e-3


def test_masked_equals_official_away_from_borders():
    """Windows whose 13x13 surroundings and 3x3 pooled neighbourhood lie inside the map see
    no border: both modes give the same tokens there."""
    torch.manual_seed(0)
    block = randomize_(FocalBlock(16, 2, focal_window=3)).double().eval()
    H = W = 35  # 5x5 windows, no padding; the centre window is far from every border
    x = torch.randn(1, H * W, 16, dtype=torch.float64)
    res = {}
    for mode in ('official', 'masked'):
        with torch.no_grad():
            res[mode] = block(x, (H, W), focal_geometry((H, W), 7, 3, 3, True, mode)).view(
                1, H, W, 16)
    centre = (slice(None), slice(14, 21), slice(14, 21))
    assert (res['official'][centre] - res['masked'][centre]).abs().max().item() < 1e-12
    assert (res['official'][:, :7, :7] - res['masked'][:, :7, :7]).abs().max().item() > 1e-3


@pytest.mark.parametrize('border_mode', ['official', 'masked'])
def test_window_chunks_give_the_same_result(border_mode, monkeypatch):
    """One SDPA call per window (chunk_bytes=1) equals one call for all windows, with grads."""
    from mmsgformer.models.focal_attention import FocalAttention
    block = randomize_(FocalBlock(16, 2, focal_window=5)).double()
    geo = focal_geometry((20, 23), 7, 3, 5, True, border_mode)
    x = torch.randn(2, 20 * 23, 16, dtype=torch.float64)
    results = []
    for chunk_bytes in (1, 1 << 40):
        monkeypatch.setattr(FocalAttention, 'chunk_bytes', chunk_bytes)
        xi = x.clone().requires_grad_()
        out = block(xi, (20, 23), geo)
        out.square().sum().backward()
        results.append((out.detach(), xi.grad))
    assert (results[0][0] - results[1][0]).abs().max().item() < 1e-12
    assert (results[0][1] - results[1][1]).abs().max().item() < 1e-12


# --------------------------------------------------------------------------- training features
def test_frozen_stages():
    model = FocalTransformer(arch=TINY, frozen_stages=2, out_indices=(0, 1, 2, 3))
    model.train()
    frozen = [model.patch_embed, model.layers[0], model.layers[1], model.norm0, model.norm1]
    for m in frozen:
        assert not m.training
        assert all(not p.requires_grad for p in m.parameters())
    assert model.layers[2].training and model.norm2.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 64)))
    loss.backward()
    opt.step()
    after = model.state_dict()
    frozen_prefixes = ('patch_embed.', 'layers.0.', 'layers.1.', 'norm0.', 'norm1.')
    for k in before:
        if k.startswith(frozen_prefixes):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before['layers.2.blocks.0.attn.qkv.weight'],
                           after['layers.2.blocks.0.attn.qkv.weight'])
    assert not torch.equal(before['norm.weight'], after['norm.weight'])


def test_with_cp_equivalence():
    x = torch.randn(2, 3, 64, 96)
    grads, outs = [], []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = FocalTransformer(arch=TINY, with_cp=with_cp, border_mode='masked')
        model.init_weights()
        model.train()
        out = model(x)
        sum(o.sum() for o in out).backward()
        outs.append(out)
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    # neighbour tables of stages 2-3 are unused on 4x6 / 2x3 maps: no gradient, cp or not
    for g in grads:
        assert [k for k, v in g.items() if v is None] == [
            f'layers.{i}.blocks.{j}.attn.relative_position_bias_table_to_neighbors'
            for i, j in ((2, 0), (2, 1), (3, 0))]
    for k in grads[0]:
        if grads[0][k] is not None:
            assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k


def test_gradients_match_official_float64():
    """Backward through the gather, pooled keys and biases equals the official backward."""
    official = official_model(112, **TINY3_OFFICIAL)
    model = FocalTransformer(arch=TINY3, **TINY3_KW, out_indices=(2, )).double().eval()
    model.load_state_dict(backbone_state(official), strict=False)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64, generator=gen)
    weight = torch.randn(1, 49, 64, dtype=torch.float64, generator=gen)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    (official_reference(official, xs[0])[0] * weight).sum().backward()
    (model(xs[1])[0].flatten(2).transpose(1, 2) * weight).sum().backward()
    assert (xs[0].grad - xs[1].grad).abs().max().item() < 1e-8
    own = dict(model.named_parameters())
    compared = 0
    for name, p in official.named_parameters():
        if name in own and own[name].grad is not None:
            assert (p.grad - own[name].grad).abs().max().item() < 1e-8, name
            compared += 1
    assert compared == len(list(official.parameters())) - 2  # all but the head
    assert own['layers.0.blocks.0.attn.relative_position_bias_table_to_neighbors'].grad.abs(
    ).max() > 0


def test_gradcheck_masked_block():
    """float64 gradcheck of a masked-mode block on a padded 9x8 map (fast mode)."""
    torch.manual_seed(0)
    block = randomize_(FocalBlock(4, 2, focal_window=3)).double()
    geo = focal_geometry((9, 8), 7, 3, 3, True, 'masked')
    x = torch.randn(1, 72, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block(t, (9, 8), geo), (x, ), eps=1e-6,
                                    atol=1e-5, fast_mode=True)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "arch='huge'"),
    (dict(arch=dict(embed_dims=16, depths=[1, 1, 1, 1])), r"exactly the keys.*missing \['num_heads'\]"),
    (dict(arch=dict(TINY, window_size=7)), r"exactly the keys.*unexpected \['window_size'\]"),
    (dict(arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[3, 2, 2, 2])),
     'not divisible'),
    (dict(arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 1, 1])), 'same length'),
    (dict(arch=TINY, focal_windows=(7, 5, 3)), 'focal_windows'),
    (dict(arch=TINY, focal_windows=(7, 4, 3, 1)), 'focal_windows'),
    (dict(arch=TINY, focal_levels=3), 'focal_levels=3'),
    (dict(arch=TINY, pool_method='avg'), 'pool_method'),
    (dict(arch=TINY, border_mode='cyclic'), 'border_mode'),
    (dict(arch=TINY, out_indices=(4, )), 'out_indices'),
    (dict(arch=TINY, frozen_stages=5), 'frozen_stages'),
    (dict(arch=TINY, expand_size=7), 'expand_size'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalTransformer(**kwargs)


def test_bad_inputs():
    model = FocalTransformer(arch=TINY).eval()
    with pytest.raises(ValueError, match=r'must be 4-D \(B, 3, H, W\)'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='must have 3 channels'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match='dtype torch.uint8'):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match='too small.*>= 32'):
        model(torch.randn(1, 3, 31, 64))
    assert FocalTransformer(arch=TINY, out_indices=(1, )).min_input_size == 8


# --------------------------------------------------------------------------- registries
@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_registry_build(scope):
    import importlib

    import mmsgformer.models  # noqa: F401  (registers the backbones)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model = registry.build(dict(type='FocalTransformer', arch=TINY, out_indices=(1, 3)))
    assert isinstance(model, FocalTransformer)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 128]


# --------------------------------------------------------------------------- classifier path
def test_image_classifier_from_converted_official_checkpoint(tmp_path):
    """Official checkpoint -> tools/model_converters/convert_official.py -> mmpretrain
    ImageClassifier (FocalTransformer out_indices=(3,), GlobalAveragePooling, LinearClsHead)
    with default backbone arguments: the logits are the official ones."""
    import importlib.util
    import json

    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS

    official = official_model(224)
    src, dst = str(tmp_path / 'official.pth'), str(tmp_path / 'converted.pth')
    torch.save({'model': {k: v.float() for k, v in official.state_dict().items()},
                'epoch': 299}, src)
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools',
                         'model_converters')
    spec = importlib.util.spec_from_file_location('convert_official',
                                                  os.path.join(tools, 'convert_official.py'))
    convert_official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_official)
    summary = convert_official.convert(src, dst, 'classifier', model='focal',
                                       arch=json.dumps(TINY))
    # Index buffers are recomputed (not "unexpected"); a classifier needs no early-stage norms;
    # the only missing tensor is the stage-4 neighbour table that a 224 official model lacks.
    assert summary['validation'] == {
        'missing': [f'layers.3.blocks.{j}.attn.relative_position_bias_table_to_neighbors'
                    for j in range(TINY['depths'][3])],
        'unexpected': [], 'mismatched': []}

    classifier = PRETRAIN_MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='FocalTransformer', arch=TINY, out_indices=(3, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=128)))
    load_checkpoint(classifier, dst, map_location='cpu')
    classifier = classifier.double().eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = classifier(x, mode='tensor')
        expected = official(x)
    assert logits.shape == (2, 10)
    assert (logits - expected).abs().max().item() < 1e-8
    assert expected.std().item() > 0.1  # non-trivial logits


def test_autocast_and_drop_path():
    model = FocalTransformer(arch=TINY, drop_path_rate=0.5, border_mode='masked')
    x = torch.randn(2, 3, 32, 48)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model.eval()(x)
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs)
    with torch.no_grad():
        eval_a, eval_b = model(x)[3], model(x)[3]
        model.train()
        torch.manual_seed(0)
        train_a = model(x)[3]
        torch.manual_seed(1)
        train_b = model(x)[3]
    assert torch.equal(eval_a, eval_b)
    assert (train_a - train_b).abs().max().item() > 1e-3
