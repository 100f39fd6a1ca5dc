"""ONNX export: sg_aggregate in standard operators, the ranking as TopK, and the export tool.

The translation is checked three ways: against the pure-PyTorch reference in float64 (no ONNX
needed), as an exported self-guided aggregation (significance -> two rankings -> aggregation) run
in onnxruntime at two sizes from one dynamic-shape file, and through
``tools/deployment/export_onnx.py`` on tiny classifiers: SG-Former static and with symbolic
height/width (one file checked at two sizes), Focal Transformer static. The tests that need onnx,
onnxscript and onnxruntime skip when they are not installed.
"""
import importlib.util
import os.path as osp
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools', 'deployment'))

HAVE_DEPLOY = all(importlib.util.find_spec(m) is not None
                  for m in ('onnx', 'onnxscript', 'onnxruntime'))
needs_deploy = pytest.mark.skipif(not HAVE_DEPLOY, reason='needs onnx, onnxscript, onnxruntime '
                                  '(pip install mmsgformer[deploy])')
TINY = dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 4, 4], depths=[2, 2, 2, 1])


@pytest.mark.parametrize('num_tokens,sr_ratio', [(3136, 8), (50, 8), (196, 4), (61, 4),
                                                 (49, 2), (7, 2), (1, 2)])
def test_onnx_form_equals_reference(num_tokens, sr_ratio):
    from mmsgformer.deploy import sg_aggregate_onnx
    from mmsgformer.ops import group_sizes_for, segment_layout, sg_aggregate_reference
    g = torch.Generator().manual_seed(num_tokens)
    tokens = torch.randn(2, num_tokens, 5, generator=g, dtype=torch.float64)
    order = torch.stack([torch.randperm(num_tokens, generator=g) for _ in range(2)])
    weight = torch.randn(sum(group_sizes_for(sr_ratio)), generator=g, dtype=torch.float64)
    bias = torch.randn(len(group_sizes_for(sr_ratio)), generator=g, dtype=torch.float64)
    layout = segment_layout(num_tokens, sr_ratio)
    ref = sg_aggregate_reference(tokens, order, weight, bias, layout)
    out = sg_aggregate_onnx(tokens, order, weight, bias, layout)
    assert out.shape == (2, layout.num_out, 5)
    assert (out - ref).abs().max().item() < 1e-12


class _Aggregation(torch.nn.Module):
    """(token map (B, C, H, W), significance (B, H, W)) -> both aggregates, as the SGA block
    does with its ``(B, H*W, C)`` tokens."""

    def __init__(self, sr_ratio):
        super().__init__()
        from mmsgformer.ops import group_sizes_for
        self.sr_ratio = sr_ratio
        self.weight = torch.nn.Parameter(torch.randn(sum(group_sizes_for(sr_ratio))))
        self.bias = torch.nn.Parameter(torch.randn(len(group_sizes_for(sr_ratio))))

    def forward(self, tokens, significance):
        from mmsgformer.models.significance import rank_tokens
        from mmsgformer.ops import segment_layout, sg_aggregate
        tokens = tokens.flatten(2).transpose(1, 2)
        order_row, order_col = rank_tokens(significance)
        layout = segment_layout(tokens.shape[1], self.sr_ratio)
        return (sg_aggregate(tokens, order_row, self.weight, self.bias, layout),
                sg_aggregate(tokens, order_col, self.weight, self.bias, layout))


def _inputs(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    # distinct significance values (a permutation): the ranking has no ties to break
    sig = torch.randperm(h * w, generator=g).float().view(1, h, w) / (h * w)
    return torch.randn(1, 8, h, w, generator=g), sig


@pytest.mark.slow
@needs_deploy
def test_aggregation_exports_to_standard_ops_with_dynamic_size(tmp_path):
    import onnx
    import onnxruntime as ort
    from torch.export import Dim

    from mmsgformer.deploy import custom_translation_table
    torch.manual_seed(0)
    module = _Aggregation(sr_ratio=4).eval()
    h, w = Dim('h', min=2, max=64), Dim('w', min=2, max=64)
    path = str(tmp_path / 'agg.onnx')
    torch.onnx.export(module, _inputs(14, 14, 0), path, dynamo=True, external_data=False,
                      dynamic_shapes={'tokens': {2: h, 3: w}, 'significance': {1: h, 2: w}},
                      custom_translation_table=custom_translation_table())
    model = onnx.load(path)
    ops = {node.op_type for node in model.graph.node}
    assert 'TopK' in ops and 'MatMul' in ops
    assert {node.domain for node in model.graph.node} <= {''}  # standard operators only
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for hw in ((14, 14), (9, 13)):  # 196 tokens (exact groups) and 117 (short groups)
        tokens, sig = _inputs(*hw, seed=hw[1])
        with torch.no_grad():
            ref = module(tokens, sig)
        outs = session.run(None, {'tokens': tokens.numpy(), 'significance': sig.numpy()})
        for o, r in zip(outs, ref):
            assert o.shape == tuple(r.shape)
            assert float((torch.from_numpy(o) - r).abs().max()) < 1e-5


def _tiny_config(tmp_path):
    path = tmp_path / 'tiny_cls.py'
    path.write_text(f"_base_ = [{osp.join(REPO, 'configs', 'sgformer_s_in1k.py')!r}]\n"
                    f"model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY!r}), "
                    "mlp_ratio=2), head=dict(in_channels=128, num_classes=10))\n")
    return str(path)


@pytest.mark.slow
@needs_deploy
def test_export_tool_tiny_classifier(tmp_path, capsys):
    import onnx
    from export_onnx import main
    torch.manual_seed(0)
    out = str(tmp_path / 'tiny.onnx')
    code = main([_tiny_config(tmp_path), '--shape', '64', '64', '--out', out, '--repeats', '1'])
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith('max abs diff vs PyTorch: '))
    diff = float(line.split(':')[1].split()[0])
    assert diff < 1e-4 and code == 0, text
    assert 'PyTorch' in text and 'onnxruntime' in text and 'ms' in text
    graph = onnx.load(out).graph
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    assert {node.domain for node in graph.node} <= {''}


def _diffs(text):
    """``{(H, W): diff}`` from the tool's ``max abs diff vs PyTorch`` lines."""
    out = {}
    for ln in text.splitlines():
        if ln.startswith('max abs diff vs PyTorch: '):
            size = ln.split('(at ')[1].split(',')[0]
            out[tuple(int(v) for v in size.split('x'))] = float(ln.split(':')[1].split()[0])
    return out


def test_plain_paths_switches_the_sgformer_fast_paths():
    from mmsgformer.deploy import plain_paths
    from mmsgformer.models import SGFormer
    backbone = SGFormer(arch=TINY, mlp_ratio=2)
    wrapper = torch.nn.Sequential(backbone)
    assert plain_paths(wrapper) == 1
    assert all(not getattr(m, 'fast_path', False) for m in backbone.modules())


@pytest.mark.slow
@needs_deploy
def test_export_tool_tiny_classifier_dynamic_size(tmp_path, capsys):
    """One file with symbolic height/width, checked at its export size and at another one.

    Exported at 112 px, where stages 1-3 (28, 14, 7) are multiples of 7 and eager PyTorch takes
    its no-padding branches: with symbolic sizes the model takes its general (padded, masked)
    path instead (``common.is_symbolic``), so the file also serves 64 px, where every stage grid
    (16, 8, 4, 2) is window-padded."""
    import onnx
    from export_onnx import main
    torch.manual_seed(0)
    out = str(tmp_path / 'tiny_dyn.onnx')
    code = main([_tiny_config(tmp_path), '--shape', '112', '112', '--dynamic', '--check-shape',
                 '64', '64', '--out', out, '--repeats', '0'])
    text = capsys.readouterr().out
    diffs = _diffs(text)
    assert set(diffs) == {(64, 64), (112, 112)}, text
    assert max(diffs.values()) < 1e-4 and code == 0, text
    graph = onnx.load(out).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, 3, 'height', 'width']
    assert {node.domain for node in graph.node} <= {''}


_FOCAL_TINY = dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])


@pytest.mark.slow
@needs_deploy
def test_export_tool_tiny_focal_classifier(tmp_path, capsys, monkeypatch):
    """Static export of a Focal classifier, its attention in several chunks per stage.

    A small ``chunk_bytes`` makes stage 1 (64 px: 3x3 windows) and stage 2 run in chunks; the
    chunk size is Python arithmetic on static sizes, which an export needs (a key count
    taken from a boolean-mask selection was data-dependent there)."""
    import onnx
    from export_onnx import main

    from mmsgformer.models.focal_attention import FocalAttention
    monkeypatch.setattr(FocalAttention, 'chunk_bytes', 1 << 18)
    cfg = tmp_path / 'tiny_focal.py'
    cfg.write_text(f"_base_ = [{osp.join(REPO, 'configs', 'focal_t_in1k.py')!r}]\n"
                   f"model = dict(backbone=dict(arch=dict(_delete_=True, **{_FOCAL_TINY!r})), "
                   "head=dict(in_channels=128, num_classes=10))\n")
    torch.manual_seed(0)
    out = str(tmp_path / 'focal.onnx')
    code = main([str(cfg), '--shape', '64', '64', '--out', out, '--repeats', '0'])
    text = capsys.readouterr().out
    diffs = _diffs(text)
    assert set(diffs) == {(64, 64)} and diffs[(64, 64)] < 1e-5 and code == 0, text
    graph = onnx.load(out).graph
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    assert {node.domain for node in graph.node} <= {''}


def test_tool_names_missing_packages(monkeypatch, capsys):
    # whatever is installed here: onnx and onnxscript seem present, onnxruntime missing
    import export_onnx
    present = {'onnx': object(), 'onnxscript': object(), 'onnxruntime': None}
    real = importlib.util.find_spec
    monkeypatch.setattr(export_onnx.importlib.util, 'find_spec',
                        lambda name, *a: present[name] if name in present else real(name, *a))
    assert export_onnx.main(['x.py', '--shape', '64', '64']) == 2
    err = capsys.readouterr().err
    assert 'onnxruntime' in err and 'mmsgformer[deploy]' in err and 'onnxscript' not in err


@needs_deploy
def test_tool_bad_config(tmp_path, capsys):
    from export_onnx import main
    assert main([str(tmp_path / 'missing.py'), '--shape', '64', '64']) == 2
    assert f'{tmp_path / "missing.py"}: no such config file' in capsys.readouterr().err
