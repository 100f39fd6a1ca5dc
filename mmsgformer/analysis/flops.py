"""Parameter and FLOP counting for mmsgformer models (fvcore-style, via ``mmengine.analysis``).

Counting convention (the one fvcore uses and the papers quote): **one FLOP per multiply-add**
(i.e. the numbers are MACs). Counted: convolutions, linear layers, explicit matmuls, plus
fvcore's norm/upsample/pool estimates (mmengine's default handle set). Not counted: softmax,
GELU, add/mul, sort, gather, pad.

On top of mmengine's :class:`~mmengine.analysis.FlopAnalyzer` defaults this module adds handles
for

* ``aten::scaled_dot_product_attention``: ``q @ k^T`` plus ``attn @ v``, i.e.
  ``B * heads * L * S * (E + Ev)``, exactly what the explicit two-matmul form is counted as, so
  a backbone gives the same figure whether it uses SDPA or ``q @ k.transpose()``;
* ``aten::baddbmm``: like ``bmm``;
* ``mmsgformer::sg_aggregate`` (the compiled self-guided aggregation op):
  ``B * C * sum_k counts_k * g_k``, which is what the official ``Linear(g_k, 1)`` formulation
  costs (and what the pure-PyTorch reference path is counted as, via its ``aten::linear``).

The main entry points are :func:`analyze_model` (any module + inputs) and
:func:`analyze_config` (a config file of mmpretrain, mmdet or mmsegmentation).
"""
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ['ATTENTION_OPS', 'EXTRA_FLOP_HANDLES', 'sdpa_flop_jit', 'baddbmm_flop_jit',
           'sg_aggregate_flop_jit', 'make_flop_analyzer', 'BreakdownRow', 'ComplexityReport',
           'analyze_model', 'stage_of', 'infer_scope', 'default_shape', 'build_model',
           'analyze_config', 'format_report']

#: operator names (as reported by ``FlopAnalyzer.by_operator``) that are attention products.
ATTENTION_OPS = ('matmul', 'bmm', 'baddbmm', 'einsum', 'scaled_dot_product_attention')
SG_AGGREGATE_OP = 'sg_aggregate'

#: default input shape ``(H, W)`` per codebase / model type (the sizes papers quote).
DEFAULT_SHAPES = {
    'mmpretrain': (224, 224),
    'mmdet': (800, 1280),
    'mmseg': (512, 2048),
    'mmseg_fpn': (512, 512),
}


def _shape(val: Any) -> Optional[List[int]]:
    return val.type().sizes() if val.isCompleteTensor() else None


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Handle for ``aten::scaled_dot_product_attention``.

    ``q (..., L, E)``, ``k (..., S, E)``, ``v (..., S, Ev)`` -> ``prod(...) * L * S * (E + Ev)``
    multiply-adds (the two matmuls; the softmax is not counted, as for the explicit form).
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    if q is None or k is None or v is None:
        raise ValueError('scaled_dot_product_attention traced without complete tensor shapes')
    batch = math.prod(q[:-2])
    L, E = q[-2], q[-1]
    S, Ev = k[-2], v[-1]
    return Counter({'scaled_dot_product_attention': batch * L * S * (E + Ev)})


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Handle for ``aten::baddbmm(input, b1 (n, c, t), b2 (n, t, d))``: ``n * c * t * d``."""
    b1, b2 = _shape(inputs[1]), _shape(inputs[2])
    n, c, t = b1
    return Counter({'baddbmm': n * c * t * b2[-1]})


def _const_int_list(val: Any) -> Optional[List[int]]:
    """Resolve a traced ``int[]`` argument to Python ints, or ``None`` if not constant."""
    node = val.node()
    if node.kind() == 'prim::Constant':
        try:
            value = val.toIValue()
        except RuntimeError:
            return None
        return [int(x) for x in value] if isinstance(value, (list, tuple)) else None
    if node.kind() == 'prim::ListConstruct':
        out = []
        for item in node.inputs():
            if item.node().kind() != 'prim::Constant':
                return None
            out.append(int(item.toIValue()))
        return out
    return None


def sg_aggregate_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Handle for ``mmsgformer::sg_aggregate(tokens (B,N,C), order, weight, bias, starts,
    lengths, group_sizes)``: ``B * C * sum_k ceil(len_k / g_k) * g_k`` multiply-adds.

    When the segment lists are not trace-time constants the exact-layout value ``B * N * C``
    is used (equal at the official sizes).
    """
    tokens = _shape(inputs[0])
    B, N, C = tokens
    lengths = _const_int_list(inputs[5]) if len(inputs) > 6 else None
    groups = _const_int_list(inputs[6]) if len(inputs) > 6 else None
    if lengths is not None and groups is not None:
        slots = sum(-(-ln // g) * g for ln, g in zip(lengths, groups))
    else:
        slots = N
    return Counter({SG_AGGREGATE_OP: B * C * slots})


EXTRA_FLOP_HANDLES = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
    'aten::baddbmm': baddbmm_flop_jit,
    'mmsgformer::sg_aggregate': sg_aggregate_flop_jit,
}


def make_flop_analyzer(model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]]):
    """mmengine ``FlopAnalyzer`` with the default handles plus :data:`EXTRA_FLOP_HANDLES`.

    Warnings about unsupported ops (softmax, gelu, sort, ...) and uncalled modules are
    silenced: those ops count 0 by convention and are listed in the report instead.
    """
    from mmengine.analysis import FlopAnalyzer
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**EXTRA_FLOP_HANDLES)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    return analyzer


@dataclass
class BreakdownRow:
    """FLOPs (multiply-adds) and parameters of one part of the model."""

    name: str
    flops: int
    params: int
    attention_flops: int = 0
    sg_aggregate_flops: int = 0


@dataclass
class ComplexityReport:
    """What :func:`analyze_model` measured.

    ``flops`` are multiply-adds (fvcore convention) for one forward at ``input_shape``.
    ``rows`` is the per-part breakdown (stem/stages of the backbone, then neck/heads), which
    sums to ``flops``/``params``.
    """

    flops: int
    params: int
    input_shape: Tuple[int, ...]
    by_operator: Dict[str, int]
    rows: List[BreakdownRow]
    uncounted_ops: Dict[str, int] = field(default_factory=dict)
    title: str = ''

    @property
    def attention_flops(self) -> int:
        return sum(self.by_operator.get(op, 0) for op in ATTENTION_OPS)

    @property
    def sg_aggregate_flops(self) -> int:
        return self.by_operator.get(SG_AGGREGATE_OP, 0)


_SG_STAGE = re.compile(r'^(?:patch_embed|block|norm)(\d+)$')  # SG-Former: 1-based
_ZERO_BASED_STAGE = re.compile(r'^(?:stages|layers)\.(\d+)$|^norm(\d+)$')  # Swin / Focal


def stage_of(child_name: str, zero_based: bool = False) -> Optional[int]:
    """1-based stage of a backbone child name, ``0`` for the stem, ``None`` for anything else.

    SG-Former naming (``zero_based=False``): ``patch_embed1`` (the stem) -> 0;
    ``patch_embed3``/``block3``/``norm3`` -> 3. Swin / Focal naming (``zero_based=True``, the
    backbone has ``stages``/``layers``): ``stages.0``/``layers.0``/``norm0`` (the output norm
    of the first stage) -> 1; ``patch_embed`` -> 0.
    """
    if child_name == 'patch_embed' or (child_name == 'patch_embed1' and not zero_based):
        return 0
    if zero_based:
        m = _ZERO_BASED_STAGE.match(child_name)
        return int(m.group(1) or m.group(2)) + 1 if m else None
    m = _SG_STAGE.match(child_name)
    return int(m.group(1)) if m else None


def _ladder_rows(backbone: nn.Module) -> Optional[Dict[str, str]]:
    """Child name -> breakdown row (``stem``, ``stage1``..``stage4``) of a backbone with a
    stage ladder (``stem`` and ``stages`` of :class:`~mmsgformer.models.SGFormer`), or
    ``None`` for other backbones."""
    stages = getattr(backbone, 'stages', None)
    stem = getattr(backbone, 'stem', None)
    if not isinstance(stages, list) or not isinstance(stem, nn.Module):
        return None
    row_of = {id(stem): 'stem'}
    for i, stage in enumerate(stages):
        for part in (stage.downsample, stage.blocks, stage.norm):
            if part is not None:
                row_of[id(part)] = f'stage{i + 1}'
    return {n: row_of[id(m)] for n, m in backbone.named_children() if id(m) in row_of}


def _module_parts(model: nn.Module, backbone_name: Optional[str]) -> List[Tuple[str, List[str]]]:
    """Group module names into breakdown rows: ``[(row name, [module names])]``.

    The backbone is split into its stem and stages (see :func:`stage_of`); every other
    top-level child of ``model`` is one row.
    """
    parts: Dict[str, List[str]] = {}

    def add(row: str, name: str) -> None:
        parts.setdefault(row, []).append(name)

    if backbone_name is None:
        top = [('', model)]
    else:
        top = list(model.named_children())
    for name, child in top:
        if name != backbone_name and backbone_name is not None:
            add(name, name)
            continue
        prefix = f'{name}.' if name else ''
        label = name or 'backbone'
        children = dict(child.named_children())
        ladder = _ladder_rows(child)  # SG-Former: its stage ladder names the parts
        if ladder is not None:
            for cname in children:
                add(f'{label}.{ladder.get(cname, cname)}', f'{prefix}{cname}')
            continue
        zero_based = 'stages' in children or 'layers' in children
        for cname, sub in children.items():
            if isinstance(sub, (nn.ModuleList, nn.Sequential)) and cname in ('stages', 'layers'):
                for idx, _ in sub.named_children():
                    stage = stage_of(f'{cname}.{idx}', zero_based=True)
                    add(f'{label}.stage{stage}', f'{prefix}{cname}.{idx}')
                continue
            stage = stage_of(cname, zero_based)
            if stage is None:
                row = f'{label}.{cname}'
            else:
                row = f'{label}.stem' if stage == 0 else f'{label}.stage{stage}'
            add(row, f'{prefix}{cname}')
    return list(parts.items())


def analyze_model(model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]],
                  backbone_name: Optional[str] = 'backbone', title: str = '') -> ComplexityReport:
    """Count parameters and multiply-adds of ``model(*inputs)``.

    Args:
        model: any module; it is traced once (put it in eval mode first).
        inputs: the forward arguments (tensors); ``inputs[0]`` shape is reported.
        backbone_name: name of the child split into stem/stages in the breakdown; ``None``
            when ``model`` *is* the backbone. If the model has no such child, top-level
            children are listed.
        title: free text shown by :func:`format_report`.

    Returns:
        A :class:`ComplexityReport`; ``flops`` counts one per multiply-add.
    """
    from mmengine.analysis import parameter_count
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    if backbone_name is not None and not hasattr(model, backbone_name):
        backbone_name = '__none__'
    analyzer = make_flop_analyzer(model, inputs)
    with torch.no_grad():
        total = int(analyzer.total())
    by_op = {k: int(v) for k, v in analyzer.by_operator().items()}
    by_mod = analyzer.by_module()
    by_mod_op = analyzer.by_module_and_operator()
    params = parameter_count(model)

    parts = _module_parts(model, backbone_name)
    rows = []
    covered_ops: Counter = Counter()
    covered_params = 0
    for row_name, names in parts:
        f = sum(int(by_mod.get(n, 0)) for n in names)
        p = sum(int(params.get(n, 0)) for n in names)
        ops: Counter = Counter()
        for n in names:
            ops.update(by_mod_op.get(n, Counter()))
        att = sum(int(ops.get(op, 0)) for op in ATTENTION_OPS)
        if f or p:  # parts without parameters or FLOPs (data preprocessor, GAP) are omitted
            rows.append(BreakdownRow(row_name, f, p, att, int(ops.get(SG_AGGREGATE_OP, 0))))
        covered_ops.update(ops)
        covered_params += p
    # Parameters owned directly by a container (e.g. the backbone's pos_embed) and ops that
    # run outside any child's __call__ (e.g. a head called as ``head.forward(x)``, whose
    # direct ops the tracer attributes to the caller) get their own rows, so rows sum up.
    rest_params = int(params['']) - covered_params
    if rest_params:
        covered = tuple(n + '.' for _, names in parts for n in names)
        own = [n for n, _ in model.named_parameters() if not n.startswith(covered)]
        label = ', '.join(own[:3]) + (', ...' if len(own) > 3 else '')
        rows.append(BreakdownRow(f'(params: {label})', 0, rest_params))
    rest_ops = {k: int(v) - int(covered_ops.get(k, 0)) for k, v in by_mod_op[''].items()}
    rest_ops = {k: v for k, v in rest_ops.items() if v}
    if rest_ops:
        label = ', '.join(sorted(rest_ops))
        rows.append(BreakdownRow(f'(ops outside child calls: {label})', sum(rest_ops.values()),
                                 0, sum(v for k, v in rest_ops.items() if k in ATTENTION_OPS),
                                 rest_ops.get(SG_AGGREGATE_OP, 0)))
    uncounted = {k: int(v) for k, v in analyzer.unsupported_ops().items()}
    return ComplexityReport(total, int(params['']), tuple(inputs[0].shape), by_op, rows,
                            uncounted, title)


# --------------------------------------------------------------------------------------------
# configs


def infer_scope(cfg) -> str:
    """``'mmpretrain'``, ``'mmdet'`` or ``'mmseg'`` for a loaded config.

    The tools' one detector, :func:`mmsgformer.utils.detect_codebase` (``default_scope``, else
    the ``codebase::`` prefixes of the config file's ``_base_`` chain).
    """
    from mmsgformer.utils import detect_codebase
    return detect_codebase(cfg)


def default_shape(cfg) -> Tuple[int, int]:
    """The input size papers quote for this kind of model.

    Classifier 224x224; detector 800x1280; UperNet (and other mmseg heads) 512x2048;
    Semantic FPN (``FPNHead``) 512x512.
    """
    scope = infer_scope(cfg)
    if scope == 'mmseg' and cfg.model.get('decode_head', {}).get('type') == 'FPNHead':
        return DEFAULT_SHAPES['mmseg_fpn']
    return DEFAULT_SHAPES[scope]


def _register_scope(scope: str) -> None:
    from mmsgformer.utils import register_codebase
    register_codebase(scope)


def build_model(cfg) -> Tuple[nn.Module, str]:
    """Build ``cfg.model`` with its codebase's registry, in eval mode, without loading weights.

    ``init_cfg`` is not applied (no download). SyncBN is reverted to BN (single process).
    Returns ``(model, scope)``.
    """
    import importlib

    from mmengine.model import revert_sync_batchnorm
    scope = infer_scope(cfg)
    _register_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model = registry.build(cfg.model)
    model = revert_sync_batchnorm(model)
    model.eval()
    return model, scope


def _data_samples(scope: str, hw: Tuple[int, int], batch: int) -> Optional[list]:
    meta = dict(img_shape=hw, ori_shape=hw, pad_shape=hw, batch_input_shape=hw,
                scale_factor=(1.0, 1.0), img_id=0)
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta) for _ in range(batch)]
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta) for _ in range(batch)]
    return None


def analyze_config(config: Union[str, Any], shape: Optional[Sequence[int]] = None,
                   cfg_options: Optional[dict] = None) -> ComplexityReport:
    """Parameters and multiply-adds of the whole model of a config, for a ``1x3xHxW`` input.

    Args:
        config: path of a config file (or an ``mmengine.Config``).
        shape: ``(H, W)``; default :func:`default_shape`.
        cfg_options: overrides merged into the config (``Config.merge_from_dict``).

    Returns:
        :class:`ComplexityReport` of the model's ``mode='tensor'`` forward: classifier
        backbone+neck+head; detector backbone+neck+RPN+RoI heads (mmdet's own get_flops
        convention); segmentor backbone+decode head (auxiliary heads are training only).
    """
    from mmengine.config import Config
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    hw = tuple(int(s) for s in (shape if shape is not None else default_shape(cfg)))
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f'shape={shape}: must be two positive ints (H, W)')
    model, scope = build_model(cfg)
    x = torch.randn(1, 3, *hw)
    samples = _data_samples(scope, hw, 1)
    model.forward = partial(model.forward, data_samples=samples, mode='tensor')
    name = config if isinstance(config, str) else cfg.filename
    return analyze_model(model, (x, ), backbone_name='backbone', title=f'{name} ({scope})')


# --------------------------------------------------------------------------------------------
# printing


def _g(n: int, digits: int = 3) -> str:
    return f'{n / 1e9:.{digits}f}'


def _m(n: int) -> str:
    return f'{n / 1e6:.3f}'


def format_report(report: ComplexityReport) -> str:
    """A plain-text table: totals, then the per-part breakdown (GMac, M params)."""
    h = 'x'.join(str(s) for s in report.input_shape)
    lines = []
    if report.title:
        lines.append(report.title)
    lines.append(f'input {h}: {_g(report.flops)} GFLOPs (multiply-adds, fvcore convention), '
                 f'{_m(report.params)} M params')
    lines.append(f'  of which attention matmuls {_g(report.attention_flops)} G, '
                 f'sg_aggregate {_g(report.sg_aggregate_flops, 4)} G')
    width = max([len(r.name) for r in report.rows] + [10])
    lines.append(f"{'part':<{width}}  {'GMac':>9}  {'%':>6}  {'attn GMac':>9}  "
                 f"{'sg_agg GMac':>11}  {'M params':>9}")
    for r in report.rows:
        pct = 100.0 * r.flops / report.flops if report.flops else 0.0
        lines.append(f'{r.name:<{width}}  {_g(r.flops):>9}  {pct:>6.2f}  '
                     f'{_g(r.attention_flops, 4):>9}  {_g(r.sg_aggregate_flops, 4):>11}  '
                     f'{_m(r.params):>9}')
    ops = ', '.join(f'{k} {_g(v)}' for k, v in sorted(report.by_operator.items(),
                                                      key=lambda kv: -kv[1]))
    lines.append(f'by operator (GMac): {ops}')
    if report.uncounted_ops:
        un = ', '.join(f'{k} x{v}' for k, v in sorted(report.uncounted_ops.items()))
        lines.append(f'not counted (0 FLOPs by convention): {un}')
    return '\n'.join(lines)
