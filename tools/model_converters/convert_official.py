"""Convert an official SG-Former / Focal Transformer checkpoint for OpenMMLab.

Usage::

    python tools/model_converters/convert_official.py SRC DST [--format classifier|backbone]
                                             [--model sgformer|focal] [--arch NAME|JSON]

* ``--format classifier`` (default): an mmpretrain ``ImageClassifier`` checkpoint
  ``{'state_dict': {'backbone.*', 'head.fc.*'}, 'meta': {...}}`` for
  ``ImageClassifier(backbone=..., neck=GlobalAveragePooling, head=LinearClsHead)``.
* ``--format backbone``: a bare backbone state dict (no ``head.*``), for
  ``init_cfg=dict(type='Pretrained', checkpoint=DST)`` of detection/segmentation configs.

The weights are picked as the official evaluation does (``state_dict_ema`` > ``state_dict`` >
``model`` > bare dict), ``module.``/``backbone.`` prefixes are stripped. With ``--model`` the
named backbone is built (on the meta device, no memory) with the arch given by ``--arch`` or the
zoo arch whose keys and shapes match best, and missing/unexpected keys are reported
(``--strict``: exit with status 2 when there are any).
The file is read with ``torch.load(weights_only=True)``; ``--unsafe-load`` (trusted files only)
disables that.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch

MODEL_CLASSES = {'sgformer': 'SGFormer', 'focal': 'FocalTransformer'}


def _backbone_class(model: str):
    import mmsgformer.models  # noqa: F401  (registers the backbones)
    from mmengine.registry import MODELS
    cls = MODELS.get(MODEL_CLASSES[model])
    if cls is None:
        raise ValueError(f'--model {model}: backbone {MODEL_CLASSES[model]} is not registered')
    return cls


def _shapes(cls, arch, out_indices: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
    try:
        with torch.device('meta'):
            model = cls(arch=arch, out_indices=out_indices)
    except Exception:  # some constructors compute buffers eagerly; build it for real then
        model = cls(arch=arch, out_indices=out_indices)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def compare_keys(expected: Dict[str, Tuple[int, ...]], state: Dict[str, torch.Tensor],
                 resizable: Tuple[str, ...] = ('pos_embed', ),
                 recomputed: Tuple[str, ...] = ()) -> Dict[str, List[str]]:
    """Missing, unexpected and shape-mismatched keys of ``state`` against ``expected`` shapes.

    Keys in ``resizable`` may differ in shape (the backbone resizes them on load); checkpoint
    keys ending in a ``recomputed`` name are buffers the backbone rebuilds (not unexpected).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state
                  if k not in expected and k.rsplit('.', 1)[-1] not in recomputed]
    mismatched = [
        f'{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}' for k in state
        if k in expected and tuple(state[k].shape) != expected[k]
        and k.rsplit('.', 1)[-1] not in resizable
    ]
    return {'missing': missing, 'unexpected': unexpected, 'mismatched': mismatched}


def validate(model: str, state: Dict[str, torch.Tensor], arch: Optional[str] = None,
             out_indices: Tuple[int, ...] = (0, 1, 2, 3)) -> Tuple[str, Dict[str, List[str]]]:
    """Build ``model`` with ``arch`` (or each zoo arch) and compare its keys with ``state``.

    ``out_indices`` is how the converted file will be used: ``(3,)`` for a classifier (no
    output norms of earlier stages), all four for detection/segmentation backbones.

    Returns:
        ``(arch description, report)`` for the given arch or the best-matching zoo arch.
    """
    cls = _backbone_class(model)
    recomputed = tuple(getattr(cls, 'recomputed_buffers', ()))

    def compare(spec):
        return compare_keys(_shapes(cls, spec, out_indices), state, recomputed=recomputed)

    if arch is not None:
        spec = json.loads(arch) if arch.lstrip().startswith('{') else arch
        return str(arch), compare(spec)
    best = None
    seen = set()
    for name, spec in getattr(cls, 'arch_zoo', {}).items():
        key = json.dumps(spec, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        report = compare(name)
        score = sum(len(v) for v in report.values())
        if best is None or score < best[0]:
            best = (score, name, report)
        if score == 0:
            break
    if best is None:
        raise ValueError(f'{cls.__name__} has no arch_zoo; pass --arch')
    return best[1], best[2]


def convert(src: str, dst: str, fmt: str = 'classifier', model: Optional[str] = None,
            arch: Optional[str] = None, weights_only: bool = True) -> Dict[str, object]:
    """Convert ``src`` to ``dst``; returns a summary dict (source entry, counts, validation)."""
    from mmsgformer.checkpoint import read_state_dict
    if fmt not in ('classifier', 'backbone'):
        raise ValueError(f"--format {fmt!r} must be 'classifier' or 'backbone'")
    ckpt = read_state_dict(src, map_location='cpu', weights_only=weights_only)
    backbone = {k: v.contiguous() for k, v in ckpt.backbone.items()}
    summary: Dict[str, object] = {
        'source': ckpt.source, 'backbone_tensors': len(backbone), 'head_tensors': len(ckpt.head),
        'dropped': ckpt.dropped
    }
    if model is not None:
        used_arch, report = validate(model, backbone, arch,
                                     out_indices=(3, ) if fmt == 'classifier' else (0, 1, 2, 3))
        summary['arch'] = used_arch
        summary['validation'] = report
    if fmt == 'backbone':
        out = backbone
    else:
        state = {f'backbone.{k}': v for k, v in backbone.items()}
        for k, v in ckpt.head.items():
            state['head.' + (k if k.startswith('fc.') else f'fc.{k}')] = v.contiguous()
        meta = {'converted_from': os.path.basename(src), 'weights': ckpt.source,
                'model': model or 'unknown'}
        meta.update({k: v for k, v in ckpt.meta.items() if k in ('epoch', 'arch', 'metric')})
        out = {'state_dict': state, 'meta': meta}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save(out, dst)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--format', default='classifier', choices=('classifier', 'backbone'))
    parser.add_argument('--model', default=None, choices=sorted(MODEL_CLASSES),
                        help='validate the keys against this backbone')
    parser.add_argument('--arch', default=None,
                        help="arch name ('s', 'tiny', ...) or a JSON dict; default: best zoo match")
    parser.add_argument('--strict', action='store_true',
                        help='exit with status 2 when validation finds any key problem')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='torch.load with weights_only=False (ONLY for trusted files)')
    args = parser.parse_args(argv)
    summary = convert(args.src, args.dst, args.format, args.model, args.arch,
                      weights_only=not args.unsafe_load)
    print(f"read {args.src}: weights from '{summary['source']}', "
          f"{summary['backbone_tensors']} backbone + {summary['head_tensors']} head tensors"
          + (f", dropped {summary['dropped']}" if summary['dropped'] else ''))
    status = 0
    if 'validation' in summary:
        report = summary['validation']
        print(f"validated against {MODEL_CLASSES[args.model]}(arch={summary['arch']}): "
              f"missing {len(report['missing'])}, unexpected {len(report['unexpected'])}, "
              f"shape mismatches {len(report['mismatched'])}")
        for name in ('missing', 'unexpected', 'mismatched'):
            for item in report[name]:
                print(f'  {name}: {item}')
        if args.strict and any(report.values()):
            status = 2
    print(f'wrote {args.format} checkpoint to {args.dst}')
    return status


if __name__ == '__main__':
    sys.exit(main())
