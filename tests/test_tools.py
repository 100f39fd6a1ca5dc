"""Tests of the user tools: FLOP counting, significance pictures, log curves, benchmark table.

Small and fast: the only full-size models are the S/M/B classifiers at 224 for the FLOP figures
(one trace each); everything else uses tiny inputs or archs.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from mmsgformer.analysis.significance_maps import (group_size_map, rank_order,
                                                   reallocation_map, resize_nearest,
                                                   segment_index_map, token_ranks)
from mmsgformer.ops import segment_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, 'tools')


def _load_tool(name, folder='analysis_tools'):
    spec = importlib.util.spec_from_file_location(f'_tool_{name}',
                                                  os.path.join(TOOLS, folder, f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_tool(name, *args, timeout=300, folder='analysis_tools'):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, folder, f'{name}.py'), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


# --------------------------------------------------------------------------------------------
# significance maps (pure computation)


def test_token_ranks_inverts_order():
    order = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    ranks = token_ranks(order)
    assert ranks.tolist() == [[1, 3, 0, 2], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match='not a permutation'):
        token_ranks(torch.tensor([[0, 0, 1, 2]]))
    with pytest.raises(ValueError, match=r'\(B, N\)'):
        token_ranks(torch.arange(4))


def test_reallocation_follows_significance_rank_sr4():
    # 28x28 grid (stage 2 at 224), significance = row-major index: token n has rank n
    H = W = 28
    sig = torch.arange(H * W, dtype=torch.float64).view(1, H, W)
    g = reallocation_map(sig, sr_ratio=4)[0].flatten()
    assert g[:196].eq(49).all() and g[196:588].eq(14).all() and g[588:].eq(7).all()
    # reversed significance -> reversed allocation
    g_rev = reallocation_map(sig.flip(-1).flip(-2), sr_ratio=4)[0].flatten()
    assert torch.equal(g_rev, g.flip(0))


def test_reallocation_random_map_counts_and_monotonic():
    torch.manual_seed(0)
    sig = torch.rand(2, 56, 56, dtype=torch.float64)
    g = reallocation_map(sig, sr_ratio=8)
    layout = segment_layout(56 * 56, 8)
    for b in range(2):
        counts = [int((g[b] == size).sum()) for size in layout.group_sizes]
        assert counts == list(layout.lengths) == [784, 1568, 784]
        # every token kept at 1/28 is more significant than every token merged by 196
        assert sig[b][g[b] == 28].min() > sig[b][g[b] == 56].max() > 0
        assert sig[b][g[b] == 56].min() > sig[b][g[b] == 196].max()


def test_group_size_map_inexact_grid_sr2():
    # N = 25 (5x5): segments floor(25*2/4) = 12 ranks at g=2, 13 ranks at g=1
    sig = torch.linspace(1, 0, 25).view(1, 5, 5)  # token 0 most significant
    order = rank_order(sig)
    assert order[0, 0].item() == 24 and order[0, -1].item() == 0
    seg = segment_index_map(order, 5, 5, sr_ratio=2)[0].flatten()
    assert seg[:13].eq(1).all() and seg[13:].eq(0).all()
    g = group_size_map(order, 5, 5, sr_ratio=2)[0].flatten()
    assert int(g.eq(2).sum()) == 12 and int(g.eq(1).sum()) == 13
    with pytest.raises(ValueError, match='sr_ratio=3'):
        group_size_map(order, 5, 5, sr_ratio=3)
    with pytest.raises(ValueError, match=r'height\*width'):
        group_size_map(order, 4, 5, sr_ratio=2)


def test_resize_nearest_and_input_checks():
    grid = torch.tensor([[[1, 2], [3, 4]]])
    out = resize_nearest(grid, (4, 6))
    assert out.dtype == grid.dtype and out.shape == (1, 4, 6)
    assert out[0, :2, :3].eq(1).all() and out[0, 2:, 3:].eq(4).all()
    with pytest.raises(ValueError, match=r'\(B, H, W\)'):
        reallocation_map(torch.rand(4, 4), sr_ratio=2)
    with pytest.raises(ValueError, match='size'):
        resize_nearest(grid, (0, 3))


# --------------------------------------------------------------------------------------------
# FLOP counting


def test_stage_of_names():
    from mmsgformer.analysis.flops import stage_of

    # SG-Former (official names, 1-based): patch_embed1 is the stem
    assert [stage_of(n) for n in ('patch_embed1', 'block1', 'patch_embed2', 'norm4')] == \
        [0, 1, 2, 4]
    assert stage_of('pos_embed') is None
    # Swin / Focal (0-based stages, out norms norm0..)
    assert [stage_of(n, zero_based=True) for n in ('patch_embed', 'stages.0', 'layers.3',
                                                    'norm0')] == [0, 1, 4, 1]
    assert stage_of('norm', zero_based=True) is None


class _ExplicitAttention(nn.Module):
    def forward(self, q, k, v):
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v


class _SdpaAttention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_counted_like_explicit_matmuls():
    from mmsgformer.analysis.flops import analyze_model
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 5)
    expected = 2 * 3 * 10 * 6 * (8 + 5)
    explicit = analyze_model(_ExplicitAttention(), (q, k, v), backbone_name=None)
    sdpa = analyze_model(_SdpaAttention(), (q, k, v), backbone_name=None)
    assert explicit.flops == expected == sdpa.flops
    assert sdpa.by_operator == {'scaled_dot_product_attention': expected}
    assert explicit.attention_flops == sdpa.attention_flops == expected


class _Aggregate(nn.Module):
    def __init__(self, n, sr, impl):
        super().__init__()
        self.layout = segment_layout(n, sr)
        self.weight = nn.Parameter(torch.randn(sum(self.layout.group_sizes)))
        self.bias = nn.Parameter(torch.randn(self.layout.num_segments))
        self.impl = impl

    def forward(self, tokens, order):
        from mmsgformer.ops import sg_aggregate
        return sg_aggregate(tokens, order, self.weight, self.bias, self.layout, impl=self.impl)


@pytest.mark.parametrize('impl', ['op', 'reference'])
def test_sg_aggregate_counted_as_linear_groups(impl):
    from mmsgformer.analysis.flops import analyze_model
    from mmsgformer.ops import op_available
    if impl == 'op' and not op_available():
        pytest.skip('mmsgformer C++ op not built')
    n, C, B = 30, 4, 2  # inexact layout: segments of 15/15 ranks at g = 2/1 -> 8*2 + 15 slots
    tokens = torch.randn(B, n, C)
    order = torch.stack([torch.randperm(n) for _ in range(B)])
    layout = segment_layout(n, 2)
    slots = sum(-(-ln // g) * g for ln, g in zip(layout.lengths, layout.group_sizes))
    assert slots == 31
    rep = analyze_model(_Aggregate(n, 2, impl), (tokens, order), backbone_name=None)
    assert rep.flops == B * C * slots
    if impl == 'op':
        assert rep.sg_aggregate_flops == B * C * slots


# paper figures (MambaOut / RMT tables, design §13.1): GMac, M params
PAPER_CLS = {'s': (4.8, 22.5), 'm': (7.5, 38.7), 'b': (15.6, 78.0)}


@pytest.fixture
def one_thread():
    """Tracing full-size models: one thread is faster than two on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _config(name):
    return os.path.join(REPO, 'configs', name)


@pytest.mark.parametrize('arch', ['s', 'm', 'b'])
def test_classifier_flops_match_paper(arch, one_thread):
    from mmsgformer.analysis.flops import analyze_config
    cfg = _config(f'sgformer_{arch}_in1k.py')
    if not os.path.exists(cfg):
        pytest.skip(f'{cfg} missing')
    rep = analyze_config(cfg)  # default shape of a classifier: 224x224
    assert rep.input_shape == (1, 3, 224, 224)
    gflops, mparams = PAPER_CLS[arch]
    assert rep.flops / 1e9 == pytest.approx(gflops, rel=0.02)
    assert rep.params / 1e6 == pytest.approx(mparams, rel=0.02)
    # breakdown rows add up, and stage 3 dominates as in the official model
    assert sum(r.flops for r in rep.rows) == rep.flops
    assert sum(r.params for r in rep.rows) == rep.params
    rows = {r.name: r for r in rep.rows}
    assert rows['backbone.stage3'].flops == max(r.flops for r in rep.rows)
    assert rows['backbone.stage1'].attention_flops > 0
    assert 0.03 < rep.attention_flops / rep.flops < 0.07
    # the self-guided aggregation is counted (as the op, or as the reference's Linear(g_k, 1))
    sga_blocks = {'s': (1, 2, 8), 'm': (1, 3, 14), 'b': (2, 3, 12)}[arch]  # per stage
    dims = {'s': (64, 128, 256), 'm': (64, 128, 256), 'b': (96, 192, 384)}[arch]
    # two listings (row- and column-major) per SGA block, each N * C multiply-adds
    expected_agg = 2 * sum(n * c * t for n, c, t in zip(sga_blocks, dims, (3136, 784, 196)))
    if rep.sg_aggregate_flops:
        assert rep.sg_aggregate_flops == expected_agg


def test_get_flops_tool(one_thread, capsys, tmp_path):
    cfg = _config('sgformer_s_in1k.py')
    if not os.path.exists(cfg):
        pytest.skip(f'{cfg} missing')
    tool = _load_tool('get_flops')
    assert tool.main([cfg, '--shape', '64', '--json', str(tmp_path / 'r.json')]) == 0
    out = capsys.readouterr().out
    assert 'GFLOPs (multiply-adds' in out and 'backbone.stage4' in out
    rep = json.loads((tmp_path / 'r.json').read_text())
    assert rep['input_shape'] == [1, 3, 64, 64]
    assert rep['params'] == pytest.approx(22.546e6, rel=1e-3)  # params do not depend on size
    assert 0 < rep['flops'] < 4.818e9 * (64 * 64) / (224 * 224) * 1.5
    assert f"input 1x3x64x64: {rep['flops'] / 1e9:.3f} GFLOPs" in out


@pytest.mark.parametrize('kind', ['maskrcnn', 'upernet'])
def test_analyze_dense_config_small_input(kind, one_thread):
    from mmengine.config import Config

    from mmsgformer.analysis.flops import analyze_config, default_shape
    path = _config(f'{kind}_sgformer_s_' + ('1x.py' if kind == 'maskrcnn' else '160k_ade20k.py'))
    if not os.path.exists(path):
        pytest.skip(f'{path} missing')
    cfg = Config.fromfile(path)
    assert default_shape(cfg) == ((800, 1280) if kind == 'maskrcnn' else (512, 2048))
    if kind == 'maskrcnn':  # fewer proposals keep the RoI heads small at this input
        cfg.model.test_cfg.rpn.update(nms_pre=64, max_per_img=32)
    rep = analyze_config(cfg, shape=(128, 160))
    assert rep.input_shape == (1, 3, 128, 160)
    rows = {r.name: r for r in rep.rows}
    heads = ('neck', 'rpn_head', 'roi_head') if kind == 'maskrcnn' else ('decode_head', )
    for name in ('backbone.stem', 'backbone.stage1', 'backbone.stage4') + heads:
        assert rows[name].flops > 0, name
    assert sum(r.flops for r in rep.rows) == rep.flops
    assert sum(r.params for r in rep.rows) == rep.params


# --------------------------------------------------------------------------------------------
# pictures


@pytest.fixture(scope='module')
def sample_image(tmp_path_factory):
    rng = np.random.default_rng(0)
    img = (rng.random((160, 200, 3)) * 60 + 80).astype(np.uint8)
    img[40:110, 50:140] = (220, 40, 40)
    path = tmp_path_factory.mktemp('img') / 'scene.png'
    Image.fromarray(img).save(path)
    return str(path)


def test_visualize_significance_writes_pictures(sample_image, tmp_path):
    tool = _load_tool('visualize_significance')
    out = tmp_path / 'vis'
    arch = json.dumps(dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 4, 4],
                           depths=[2, 4, 2, 1]))
    assert tool.main([sample_image, '--arch', arch, '--size', '112', '224',
                      '--out-dir', str(out)]) == 0
    sig = sorted(out.glob('significance_*.png'))
    real = sorted(out.glob('reallocation_*.png'))
    # one hybrid-scale block per pair of blocks in stages 0-2: 1 + 2 + 1 (0-based numbering)
    assert len(sig) == len(real) == 4
    assert {p.name for p in sig} == {'significance_s0_b0.png', 'significance_s1_b0.png',
                                     'significance_s1_b2.png', 'significance_s2_b0.png'}
    assert {p.name for p in real} == {'reallocation_s0_b1.png', 'reallocation_s1_b1.png',
                                      'reallocation_s1_b3.png', 'reallocation_s2_b1.png'}
    for p in sig + real:
        im = np.asarray(Image.open(p).convert('RGB'), dtype=np.float64)
        assert im.shape == (112 + tool.CAPTION_H, 224, 3)
        assert im[:112].std() > 10.0  # not blank
        assert im[112:].std() > 10.0  # the caption has text
    summary = np.asarray(Image.open(out / 'summary.png').convert('RGB'), dtype=np.float64)
    assert summary.std() > 10.0


def test_reallocation_panel_colours_by_group_size():
    tool = _load_tool('visualize_significance')
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    gmap = torch.tensor([[2, 1], [1, 2]])  # stage-3 rule (sr 2): g = 2 or 1
    panel, legend = tool.reallocation_panel(rgb, gmap, sr_ratio=2, alpha=1.0)
    assert [label for _, label in legend] == ['1/2', '1/1']
    assert tuple(panel[0, 0]) == legend[0][0] and tuple(panel[0, 3]) == legend[1][0]
    assert tuple(panel[3, 0]) == legend[1][0] and tuple(panel[3, 3]) == legend[0][0]


# --------------------------------------------------------------------------------------------
# logs


def _write_log(path):
    lines = []
    for it in range(10, 110, 10):
        lines.append(dict(lr=1e-4, loss=2.0 / it ** 0.5, loss_cls=1.0 / it ** 0.5,
                          data_time=0.01, time=0.5, epoch=1, iter=it, memory=100, step=it))
    for ep in (1, 2):
        lines.append({'coco/bbox_mAP': 0.1 * ep, 'coco/segm_mAP': 0.05 * ep,
                      'data_time': 0.02, 'time': 0.3, 'step': ep})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(json.dumps(r) for r in lines) + '\n')


def test_analyze_logs(tmp_path):
    tool = _load_tool('analyze_logs')
    log = tmp_path / 'work' / '20260101_000000' / 'vis_data' / 'scalars.json'
    _write_log(log)
    train, val = tool.load_log(str(log))
    assert train['loss'][0] == [float(i) for i in range(10, 110, 10)]
    assert train['loss'][1][0] == pytest.approx(2.0 / math.sqrt(10))
    assert val['coco/bbox_mAP'] == ([1.0, 2.0], [0.1, 0.2])
    assert 'time' not in val and 'lr' in train
    assert tool.default_keys(train, val) == ['loss', 'loss_cls', 'coco/bbox_mAP',
                                             'coco/segm_mAP']
    out = tmp_path / 'curves.png'
    assert tool.main([str(tmp_path / 'work'), '--out', str(out)]) == 0  # finds vis_data
    im = np.asarray(Image.open(out).convert('RGB'), dtype=np.float64)
    assert im.shape == (720, 1500, 3)  # 2x3 panels of 5x3.6 in at 100 dpi
    assert im.std() > 5.0


# --------------------------------------------------------------------------------------------
# benchmark


def test_benchmark_attention_prints_one_row_per_call(capsys, monkeypatch):
    """The per-call attention benchmark (small shapes, one round): a row per call with PyTorch's
    time and each vector kernel's, and the kernel choice restored after every call."""
    from mmsgformer.ops import op_available
    from mmsgformer.ops.attention import CPU_ATTENTION_ENV
    if not op_available():
        pytest.skip('the C++ extension is not built')
    tool = _load_tool('benchmark_attention')
    monkeypatch.delenv(CPU_ATTENTION_ENV, raising=False)
    assert tool.main(['--small', '--repeat', '1']) == 0
    assert CPU_ATTENTION_ENV not in os.environ
    lines = capsys.readouterr().out.splitlines()
    from mmsgformer.ops.attention import vector_kernels_here
    kernels = vector_kernels_here()
    assert f"vector kernels here: {', '.join(kernels) or 'none'}" in lines[0]
    header, rows = lines[1].split(' | '), lines[3:]
    assert len(header) == 4 + 2 * len(kernels) and len(rows) == len(tool.SHAPES)
    assert [r.split(' | ')[2] for r in rows] == ['infer', 'infer+mass', 'fwd+bwd', 'fwd+bwd']
    with pytest.raises(SystemExit):
        tool.main(['--repeat', '0'])


def test_benchmark_table_ratios_and_cpu_flag():
    tool = _load_tool('benchmark')
    base = dict(size_name='224', batch=8, peak_mib=900., cpu_util=0.98, params_m=28.)
    train = dict(base, mode='train', size_name='512x512', batch=4)
    results = [dict(base, mode='infer', model='swin-t', step_s=0.5, growth_mib=300.),
               dict(base, mode='infer', model='sgformer-s', step_s=0.4, growth_mib=150.,
                    gmac_step=38.5, gmac_per_s=96.25),
               dict(base, mode='infer', model='focal-t', error='exit 1: boom'),
               dict(train, model='swin-t', step_s=8.0, growth_mib=3000.),
               dict(train, model='sgformer-s', step_s=12.0, growth_mib=6000., cpu_util=0.5),
               dict(train, model='sgformer-s', with_cp=True, step_s=16.0, growth_mib=1500.)]
    table = tool.format_table(results).splitlines()
    rows = [line.split() for line in table if line.startswith(('sgformer', 'swin', 'focal'))]
    assert table[0].split()[:4] == ['model', 'mode', 'input', 'batch']
    # infer: 0.4 s per 8 images vs 0.5 s -> 0.80x the time, half the memory growth, 96.25 GMac/s
    assert rows[1][:7] == ['sgformer-s', 'infer', '224', '8', '20', '0.4', '0.80x']
    assert rows[1][7:9] == ['38.5', '96.25'] and rows[1][11] == '0.50x'
    assert rows[0][6] == '1.00x' and rows[0][7:9] == ['n/a', 'n/a']
    assert rows[2][:2] == ['focal-t', 'infer'] and 'FAILED:' in rows[2]
    # train: ratios against the train Swin-T at the same input; a 50% cpu share is flagged
    assert rows[4][:2] == ['sgformer-s', 'train'] and rows[4][6] == '1.50x'
    assert rows[4][11:13] == ['2.00x', '50%!']
    assert rows[3][12] == '98%' and rows[5][12] == '98%'
    assert table[0].split()[-4:-2] == ['cpu', 'sys'] and rows[3][13] == 'n/a'
    assert rows[5][0] == 'sgformer-s+cp' and rows[5][6] == '2.00x' and rows[5][11] == '0.50x'
    notes = table[table.index('') + 1:]
    assert any('3x the forward' in n for n in notes)
    assert any(n.startswith('! cpu share under 90%') and '(1 row(s))' in n for n in notes)
    # no flag, no flag note; no train rows, no 3x note; no GEMM rate, no GEMM column
    quiet = tool.format_table(results[:2])
    assert '!' not in quiet and '3x' not in quiet and 'GEMM' not in quiet
    # with the run's GEMM rate: the share of it each row's GMac/s reaches
    shared = tool.format_table(results[:2], gemm_rate=125.).splitlines()
    assert shared[0].split()[-2:] == ['GEMM', 'share']
    assert shared[3].split()[-1] == '77%' and shared[2].split()[-1] == 'n/a'
    assert any(n.startswith('GEMM share: GMac/s over 125.0 GMac/s') for n in shared)


def test_benchmark_rounds_alternate_the_order_and_pair_the_ratios(monkeypatch, capsys):
    tool = _load_tool('benchmark')
    calls = []
    # the VM slows down over the run: every later cell takes longer; sgformer-s is 2x swin-t
    def fake_measure(spec, timeout):
        calls.append(spec.get('model', 'gemm'))
        if spec.get('kind') == 'gemm':
            return dict(spec, gemm_gmac_per_s=100. + len(calls))
        drift = 1 + 0.5 * len(calls)
        step = (2. if spec['model'] == 'sgformer-s' else 1.) * drift
        return dict(spec, step_s=step, times=[step], cpu_util=0.95, sys_share=0.1,
                    base_mib=100., peak_mib=500., params_m=1.,
                    growth_mib=300. if spec['model'] == 'sgformer-s' else 400.,
                    gmac_fwd=1., gmac_step=1., gmac_per_s=1. / step)
    monkeypatch.setattr(tool, 'measure', fake_measure)
    emitted = []
    assert tool.main(['--modes', 'infer', '--sizes', '64x64', '--models', 'sgformer-s', 'swin-t',
                      '--rounds', '3'], emit=emitted.append) == 0
    assert calls == ['sgformer-s', 'swin-t', 'gemm', 'swin-t', 'sgformer-s', 'gemm',
                     'sgformer-s', 'swin-t', 'gemm']
    assert 'one fresh process per row and round, 3 rounds' in emitted[0]
    table = emitted[1].splitlines()
    assert table[0].split()[6:10] == ['time', 'vs', 'Swin-T', 'rounds']
    rows = {r.split()[0]: r.split() for r in table if r.startswith(('sgformer', 'swin'))}
    # calls 1-8 (gemm included) run at drift 1.5 ... 5: sgformer-s 3, 7, 9 s, swin-t 2, 3, 5 s;
    # per-round ratios 1.5, 2.33, 1.8: median 1.80 (the ratio of the medians would be 7 / 3)
    assert rows['sgformer-s'][5:8] == ['7', '1.80x', '1.50-2.33']
    assert rows['swin-t'][5:8] == ['3', '1.00x', '1.00-1.00']
    assert rows['sgformer-s'][8:10] == ['1', '0.1429']  # GMac / median s/step
    assert rows['sgformer-s'][12] == '0.75x'
    assert any(n.startswith('3 rounds, the cell order reversed') for n in table)
    assert any(n.startswith('GEMM share: GMac/s over 106.0') and n.endswith('(median over rounds).')
               for n in table)  # the rates 103, 106, 109 of the three rounds
    assert 'round 2/3: swin-t infer @ 64x64' in capsys.readouterr().err
    # one round: as before, no rounds column; a failure in any round fails the cell
    one = tool.combine_rounds([[dict(model='a', step_s=1.)]])
    assert one == [dict(model='a', step_s=1.)]
    failed = tool.combine_rounds([[dict(model='a', step_s=1., times=[1.])],
                                  [dict(model='a', error='exit 1: boom')]])
    assert failed == [dict(model='a', error='exit 1: boom')]
    with pytest.raises(SystemExit):
        tool.parse_args(['--rounds', '0'])


def test_benchmark_cells_follow_modes_sizes_and_with_cp():
    tool = _load_tool('benchmark')
    specs = tool.cell_specs(tool.parse_args(['--modes', 'infer', 'train', '--with-cp',
                                             '--models', 'sgformer-s', 'swin-t']))
    cells = [(s['mode'], s['size_name'], s['model'], s['with_cp'], s['batch'], s['warmup'],
              s['repeats'], s['stat'], s['dense']) for s in specs]
    assert cells == [
        ('infer', '224', 'sgformer-s', False, 8, 3, 5, 'median', False),
        ('infer', '224', 'swin-t', False, 8, 3, 5, 'median', False),
        ('infer', '800x1344', 'sgformer-s', False, 1, 3, 5, 'median', True),
        ('infer', '800x1344', 'swin-t', False, 1, 3, 5, 'median', True),
        ('train', '800x1344', 'sgformer-s', False, 2, 1, 2, 'best', True),
        ('train', '800x1344', 'sgformer-s', True, 2, 1, 2, 'best', True),
        ('train', '800x1344', 'swin-t', False, 2, 1, 2, 'best', True),
        ('train', '800x1344', 'swin-t', True, 2, 1, 2, 'best', True),
        ('train', '512x512', 'sgformer-s', False, 4, 1, 2, 'best', True),
        ('train', '512x512', 'sgformer-s', True, 4, 1, 2, 'best', True),
        ('train', '512x512', 'swin-t', False, 4, 1, 2, 'best', True),
        ('train', '512x512', 'swin-t', True, 4, 1, 2, 'best', True)]
    default = tool.cell_specs(tool.parse_args(['--modes', 'train']))
    assert [s['model'] for s in default[:7]] == tool.DEFAULT_TRAIN
    assert {s['size_name'] for s in default} == {'800x1344', '512x512'}
    assert tool.parse_size('64') == ((64, 64), False)
    assert tool.parse_size('96x128') == ((96, 128), True)
    with pytest.raises(ValueError, match="size '8x8' must be"):
        tool.parse_size('8x8')


def test_benchmark_train_step_with_cp(one_thread):
    # mmdet's Swin for dense rows; with_cp reaches the blocks and leaves the gradients unchanged
    tool = _load_tool('benchmark')
    from mmdet.models.backbones import SwinTransformer
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for name in ('swin-tiny-test', 'sgformer-tiny'):
        for cp in (False, True):
            torch.manual_seed(0)
            model = tool.build_model(name, dense=True, img_hw=(64, 64), with_cp=cp)
            if name == 'swin-tiny-test':
                assert isinstance(model, SwinTransformer)
                assert model.stages[0].blocks[0].with_cp is cp
            model.train()
            tool.make_step(model, x, 'train')()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                    if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and grads[2].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[3], grads[2])


@pytest.mark.parametrize('name', ['swin-tiny-test', 'focal-tiny-test', 'sgformer-tiny'])
def test_benchmark_worker_dense_backbones(name, one_thread):
    # the 800x1344 rows build backbones with four outputs (mmdet's Swin for 'swin-*')
    tool = _load_tool('benchmark')
    spec = dict(model=name, mode='infer', size_name='64x96', size=[64, 96], batch=1, dense=True,
                warmup=0, repeats=2, stat='median', gmac=False, threads=1)
    res = tool.run_worker(spec)
    assert len(res['times']) == 2 and res['step_s'] == pytest.approx(sum(res['times']) / 2)
    assert res['peak_mib'] >= res['base_mib'] > 0 and res['params_m'] > 0
    model = tool.build_model(name, dense=True, img_hw=(64, 96))
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 64, 96))
    assert len(outs) == 4 and outs[0].shape[-2:] == (16, 24)


def test_benchmark_train_smoke_run(tmp_path, one_thread):
    # one thread per worker: two threads on a busy 2-core machine are many times slower
    out = _run_tool('benchmark', '--modes', 'train', '--models', 'swin-tiny-test',
                    'sgformer-tiny', '--sizes', '64x64', '--batch', '2', '--repeats', '1',
                    '--warmup', '0', '--threads', '1', '--reference', 'swin-tiny-test',
                    '--json', str(tmp_path / 'r.json'))
    lines = out.strip().splitlines()
    assert lines[0].startswith('CPU benchmark: torch.set_num_threads(1), one fresh process per '
                               'row, glibc malloc defaults;')
    assert 'infer rows' not in lines[0]
    assert 'loss = sum of mean squares of the outputs, backward, 0 warm-up + best of 1 steps' \
        in lines[0]
    assert lines[1].split()[:4] == ['model', 'mode', 'input', 'batch']
    assert lines[1].split()[-2:] == ['GEMM', 'share']
    rows = [line.split() for line in lines if line.startswith(('sgformer-tiny', 'swin-tiny'))]
    assert [r[:4] for r in rows] == [['swin-tiny-test', 'train', '64x64', '2'],
                                     ['sgformer-tiny', 'train', '64x64', '2']]
    for r in rows:  # GMac/s is GMac / (s/step) from the row's own (rounded) figures
        step_s, gmac, gmac_s = float(r[5]), float(r[7]), float(r[8])
        assert gmac > 0 and gmac_s == pytest.approx(gmac / step_s, rel=2e-3)
        assert r[-1].endswith('%') and float(r[-1][:-1]) > 0
    assert rows[0][6] == rows[0][11] == '1.00x' and rows[1][6].endswith('x')
    assert any('3x the forward' in line for line in lines)
    res = {r['model']: r for r in json.loads((tmp_path / 'r.json').read_text())}
    tool = _load_tool('benchmark')
    for name, r in res.items():
        assert r['gmac_per_s'] == pytest.approx(r['gmac_step'] / r['step_s'], rel=1e-12)
        assert r['gemm_gmac_per_s'] > 0 and 0 <= r['sys_share'] < 1
        assert r['gmac_step'] == pytest.approx(3 * r['gmac_fwd'], rel=1e-12)
        assert r['growth_mib'] > 0 and len(r['times']) == 1
    # the forward count is the FLOP counter's for that model and input (batch 2)
    model = tool.build_model('sgformer-tiny', dense=True, img_hw=(64, 64))
    assert res['sgformer-tiny']['gmac_fwd'] * 1e9 == pytest.approx(
        tool.forward_macs(model, torch.zeros(2, 3, 64, 64)), rel=1e-12)


@pytest.mark.parametrize('name', ['sgformer-tiny', 'swin-tiny-test', 'focal-tiny-test'])
def test_benchmark_breakdown_parts(name, one_thread):
    # every part's multiply-adds are counted once: the parts plus 'other' give the forward's total
    tool = _load_tool('benchmark')
    text = tool.breakdown(name, '64x96', batch=1, repeats=1, threads=1)
    head, columns, *rows = text.splitlines()
    assert head.startswith(f'{name} infer at 64x96, batch 1, 1 thread(s)')
    assert columns.split() == ['part', 's', 'share', 'GMac', 'GMac/s']
    labels = [r.rsplit(None, 4)[0] for r in rows]
    assert labels[-1] == 'other' and len(labels) > 3
    total_gmac = float(head.split(', ')[-2].split()[0])
    gmacs = [float(r.split()[-2]) for r in rows]
    assert sum(gmacs) == pytest.approx(total_gmac, rel=1e-3) and min(gmacs[:-1]) > 0
    shares = [float(r.split()[-3].rstrip('%')) for r in rows]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(rows))
    expected = {'sgformer-tiny': ['SelfGuidedAttention (stage 1)', 'ConvStem', 'Mlp (stage 3)'],
                'swin-tiny-test': ['ShiftWindowMSA (stage 1)', 'FFN (stage 4)', 'PatchEmbed'],
                'focal-tiny-test': ['FocalAttention (stage 2)', 'Mlp (stage 1)']}[name]
    assert set(expected) <= set(labels), labels


def test_benchmark_malloc_retain_reaches_the_workers(monkeypatch):
    tool = _load_tool('benchmark')
    specs = tool.cell_specs(tool.parse_args(['--modes', 'train', '--models', 'swin-t',
                                             '--sizes', '64x64', '--malloc', 'retain']))
    assert {s['malloc'] for s in specs} == {'retain'}
    seen = []

    def fake_run(cmd, env, **kw):
        seen.append(env)
        return subprocess.CompletedProcess(cmd, 0, tool.RESULT_TAG + '{"ok": 1}\n', '')
    monkeypatch.setattr(tool.subprocess, 'run', fake_run)
    assert tool.measure(specs[0], 10) == {'ok': 1}
    assert seen[0]['MALLOC_MMAP_MAX_'] == '0' and int(seen[0]['MALLOC_TRIM_THRESHOLD_']) > 2 ** 32
    tool.measure(dict(specs[0], malloc='system'), 10)
    assert 'MALLOC_MMAP_MAX_' not in seen[1] or seen[1]['MALLOC_MMAP_MAX_'] == os.environ.get(
        'MALLOC_MMAP_MAX_')
    line = tool.describe_protocol([dict(specs[0], warmup=1, repeats=2)], 2)
    assert 'malloc retain (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=' in line
