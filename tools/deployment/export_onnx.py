"""Export a config's model to ONNX, check it in onnxruntime against PyTorch, time both.

What is exported (``torch.onnx.export``, the dynamo-based exporter of torch >= 2.9):

* mmpretrain classifiers (SG-Former, Focal): image -> class logits ``(1, num_classes)``;
* mmseg segmentors (UperNet, Semantic FPN): image -> decode-head logits ``(1, K, H/4, W/4)``
  (``mode='tensor'``: before the resize to the image and the argmax);
* mmdet detectors: image -> backbone + neck features (the FPN levels). The RPN/RoI heads with NMS
  and RoIAlign are not exported.

``sg_aggregate`` is written in standard ONNX operators during the export (no custom-op library
is needed to run the file) and the significance ranking (``torch.sort``) becomes ``TopK``. The
same random input is run in PyTorch and in onnxruntime (CPU) and the largest difference over
all outputs is printed as ``max abs diff vs PyTorch: <value>``; ``--dynamic`` exports with
symbolic height/width and checks the same file at a second size too. Without ``--checkpoint``
the model has random weights (nothing is downloaded).

Usage::

    python tools/deployment/export_onnx.py CONFIG [--checkpoint CKPT] --shape H W [--dynamic]
        [--check-shape H2 W2] [--out FILE.onnx] [--repeats 10] [--atol 1e-4]

Needs ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install mmsgformer[deploy]``). Exit
status: 0 when every check is within ``--atol``, 1 when one is not or the file fails at a size,
2 for bad input or missing packages.
"""
import argparse
import importlib.util
import os
import os.path as osp
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

#: import name -> pip name of what the export and the check need.
DEPLOY_PACKAGES = {'onnx': 'onnx', 'onnxscript': 'onnxscript', 'onnxruntime': 'onnxruntime'}


def missing_packages() -> List[str]:
    """The pip names of the deploy packages that are not importable."""
    return [pip for mod, pip in DEPLOY_PACKAGES.items() if importlib.util.find_spec(mod) is None]


class ExportWrapper(torch.nn.Module):
    """Image ``(B, 3, H, W)`` -> tuple of output tensors, for one codebase's model.

    mmpretrain: ``(logits,)``; mmseg: ``(seg_logits,)``; mmdet: the neck's feature maps.
    """

    def __init__(self, model: torch.nn.Module, codebase: str) -> None:
        super().__init__()
        if codebase not in ('mmpretrain', 'mmseg', 'mmdet'):
            raise ValueError(f'codebase={codebase!r} must be mmpretrain, mmseg or mmdet')
        self.model, self.codebase = model, codebase

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.codebase == 'mmdet':
            feats = self.model.backbone(x)
            if getattr(self.model, 'with_neck', False):
                feats = self.model.neck(feats)
            return tuple(feats)
        out = self.model(x, mode='tensor')
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def describe(codebase: str) -> str:
    return {'mmpretrain': 'classifier (logits)', 'mmseg': 'segmentor (decode-head logits)',
            'mmdet': 'detector backbone + neck (features)'}[codebase]


def export(wrapper: ExportWrapper, shape: Tuple[int, int], out: str, dynamic: bool) -> float:
    """Write ``out`` (one file, weights inside); returns the export seconds.

    A deep copy is exported: tracing runs the model on fake tensors, and whatever a module
    caches on itself during that run (e.g. fused projection weights) must not reach the model
    that is then run eagerly as the reference. With ``dynamic`` the copy takes its plain path
    (:func:`mmsgformer.deploy.plain_paths`: no chunking chosen from the size) and the file's
    input is ``(1, 3, height, width)``.
    """
    import copy

    from mmsgformer.deploy import custom_translation_table, plain_paths
    x = torch.randn(1, 3, *shape)
    model = copy.deepcopy(wrapper)
    dynamic_shapes = None
    if dynamic:
        plain_paths(model)
        dynamic_shapes = {'x': {2: 'height', 3: 'width'}}  # named symbolic sizes (Dim.DYNAMIC)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    t0 = time.perf_counter()
    # the model's size-keyed caches stay empty while exporting (fast_paths.is_tracing)
    torch.onnx.export(model, (x,), out, dynamo=True,
                      dynamic_shapes=dynamic_shapes,
                      input_names=['input'], external_data=False, verbose=False,
                      custom_translation_table=custom_translation_table())
    return time.perf_counter() - t0


def ort_session(path: str, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def compare(wrapper: ExportWrapper, session, shape: Tuple[int, int],
            seed: int = 0) -> Tuple[float, float, torch.Tensor]:
    """Run one random ``(1, 3, *shape)`` input in both; returns (max abs diff over all
    outputs, max abs PyTorch output, the input)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *shape, generator=g)
    with torch.no_grad():
        ref = wrapper(x)
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    if len(outs) != len(ref):
        raise RuntimeError(f'onnxruntime returned {len(outs)} outputs, PyTorch {len(ref)}')
    diff, scale = 0.0, 0.0
    for o, r in zip(outs, ref):
        if tuple(o.shape) != tuple(r.shape):
            raise RuntimeError(f'output shape {tuple(o.shape)} in onnxruntime, '
                               f'{tuple(r.shape)} in PyTorch')
        diff = max(diff, float((torch.from_numpy(o) - r).abs().max()))
        scale = max(scale, float(r.abs().max()))
    return diff, scale, x


def latency(wrapper: ExportWrapper, session, x: torch.Tensor,
            repeats: int) -> Tuple[float, float]:
    """Median milliseconds of one forward in PyTorch (no grad) and onnxruntime (1 warm-up)."""
    feed = {session.get_inputs()[0].name: x.numpy()}
    torch_ms, ort_ms = [], []
    with torch.no_grad():
        wrapper(x)
        session.run(None, feed)
        for _ in range(repeats):
            t0 = time.perf_counter()
            wrapper(x)
            torch_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            session.run(None, feed)
            ort_ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(torch_ms), statistics.median(ort_ms)


def load_model(config: str, checkpoint: Optional[str]):
    """``(model, codebase)`` of ``config`` in eval mode (random weights without checkpoint)."""
    from mmsgformer.deploy import build_model
    from mmsgformer.utils import load_config
    if not osp.isfile(config):
        raise ValueError(f'{config}: no such config file')
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise ValueError(f'{checkpoint}: no such checkpoint file')
    cfg, codebase = load_config(config)
    return build_model(cfg, codebase, checkpoint, config), codebase


def run(config: str, shape: Tuple[int, int], out: str, checkpoint: Optional[str] = None,
        dynamic: bool = False, check_shape: Optional[Tuple[int, int]] = None,
        repeats: int = 10, atol: float = 1e-4) -> Dict[str, object]:
    """Export, check and time; prints the report lines and returns the figures."""
    model, codebase = load_model(config, checkpoint)
    wrapper = ExportWrapper(model, codebase).eval()
    seconds = export(wrapper, shape, out, dynamic)
    size_mb = osp.getsize(out) / 2 ** 20
    weights = osp.basename(checkpoint) if checkpoint else 'random weights'
    print(f'exported {describe(codebase)} of {osp.basename(config)} ({weights}) at '
          f'{shape[0]}x{shape[1]}{" with dynamic H, W" if dynamic else ""} -> {out} '
          f'({size_mb:.1f} MiB, {seconds:.1f} s)')
    threads = torch.get_num_threads()
    session = ort_session(out, threads)
    result: Dict[str, object] = {'codebase': codebase, 'file': out, 'export_s': seconds,
                                 'diffs': {}, 'ok': True}
    sizes = [shape] + ([check_shape] if dynamic and check_shape else [])
    x = None
    for i, hw in enumerate(sizes):
        try:
            diff, scale, xi = compare(wrapper, session, hw)
        except Exception as exc:  # the file does not serve this size
            print(f'at {hw[0]}x{hw[1]}: onnxruntime FAILED: {str(exc).splitlines()[0][:300]}')
            if i > 0:
                print(f'the file is specialized to {shape[0]}x{shape[1]}: the model took a '
                      'size-specific branch there (README, "ONNX export": which sizes to '
                      'export at)')
            result['ok'] = False
            continue
        x = xi if i == 0 else x
        result['diffs'][hw] = diff
        note = '' if diff <= atol else f'  (above --atol {atol:g})'
        print(f'max abs diff vs PyTorch: {diff:.3g}  (at {hw[0]}x{hw[1]}, float32, largest '
              f'|output| {scale:.3g}){note}')
        result['ok'] = bool(result['ok']) and diff <= atol
    if x is not None and repeats > 0:
        t_torch, t_ort = latency(wrapper, session, x, repeats)
        result['latency_ms'] = (t_torch, t_ort)
        print(f'CPU latency at {shape[0]}x{shape[1]}, batch 1, {threads} thread(s), median of '
              f'{repeats}: PyTorch {t_torch:.1f} ms, onnxruntime {t_ort:.1f} ms')
    return result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='an mmpretrain, mmseg or mmdet config')
    p.add_argument('--checkpoint', help='full-model checkpoint of the config (default: random '
                   'weights)')
    p.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'))
    p.add_argument('--dynamic', action='store_true', help='symbolic input height and width')
    p.add_argument('--check-shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='with --dynamic: the second size checked (default: H+32, W+64)')
    p.add_argument('--out', help='ONNX file (default: work_dirs/onnx/<config name>.onnx)')
    p.add_argument('--repeats', type=int, default=10, help='latency runs (0: no timing)')
    p.add_argument('--atol', type=float, default=1e-4)
    p.add_argument('--threads', type=int, default=None,
                   help='torch and onnxruntime intra-op threads (default: torch default)')
    args = p.parse_args(argv)
    if min(args.shape) < 32:
        p.error(f'--shape {args.shape}: both sides must be >= 32')
    if args.dynamic and args.check_shape is None:
        args.check_shape = [args.shape[0] + 32, args.shape[1] + 64]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    missing = missing_packages()
    if missing:
        print(f'error: export_onnx needs {", ".join(missing)}: pip install mmsgformer[deploy] '
              f'(or pip install {" ".join(missing)})', file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or osp.join('work_dirs', 'onnx',
                               osp.splitext(osp.basename(args.config))[0] + '.onnx')
    try:
        result = run(args.config, tuple(args.shape), out, args.checkpoint, args.dynamic,
                     tuple(args.check_shape) if args.check_shape else None, args.repeats,
                     args.atol)
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except Exception as exc:  # torch.onnx's errors are pages long: print their summary line
        lines = [ln for ln in str(exc).splitlines() if ln.startswith('<class')] or [str(exc)]
        print(f'error: the export of {args.config} failed: {lines[0][:500]}', file=sys.stderr)
        return 1
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
