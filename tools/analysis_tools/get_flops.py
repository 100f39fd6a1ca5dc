"""Parameters and FLOPs of the whole model of a config (classifier, Mask R-CNN, Semantic FPN, UperNet).

FLOPs are **multiply-adds** counted the fvcore way (one per multiply-add; convolutions, linear
layers, attention matmuls incl. ``scaled_dot_product_attention``, and the custom
``mmsgformer::sg_aggregate`` op), with a per-stage breakdown. See
:mod:`mmsgformer.analysis.flops` for exactly what is and is not counted.

Default input size per model type (the sizes papers quote): classifier 224x224, detector
800x1280, UperNet 512x2048, Semantic FPN 512x512.

Usage::

    python tools/analysis_tools/get_flops.py configs/sgformer_s_in1k.py
    python tools/analysis_tools/get_flops.py configs/maskrcnn_sgformer_s_1x.py --shape 800 1280
    python tools/analysis_tools/get_flops.py CONFIG --shape 512 --json out.json
"""
import argparse
import dataclasses
import json
import sys
import time

from mmengine.config import DictAction

from mmsgformer.analysis.flops import analyze_config, format_report
from mmsgformer.utils import load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file')
    p.add_argument('--shape', type=int, nargs='+',
                   help='input H [W] (default: 224 / 800 1280 / 512 2048 / 512 by model type)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                   help='override config entries, e.g. model.backbone.sga_impl=reference')
    p.add_argument('--json', help='also write the report to this JSON file')
    args = p.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = [args.shape[0], args.shape[0]]
        if len(args.shape) != 2 or min(args.shape) < 32:
            p.error(f'--shape {args.shape}: give H or H W, each >= 32')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    cfg, _ = load_config(args.config, args.cfg_options)
    report = analyze_config(cfg, args.shape)
    print(format_report(report))
    print(f'(traced in {time.perf_counter() - t0:.1f} s)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dataclasses.asdict(report), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
