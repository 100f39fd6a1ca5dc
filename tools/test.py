"""Evaluate a checkpoint of any mmsgformer config (mmpretrain, mmdet or mmsegmentation).

The codebase is detected as in ``tools/train.py`` (:func:`mmsgformer.utils.detect_codebase`);
mmsgformer is imported first, so runner checkpoints load with torch's weights-only unpickler.

Usage::

    python tools/test.py configs/upernet_sgformer_s_160k_ade20k.py CKPT [--tta]
        [--work-dir DIR] [--cfg-options key=value ...] [--launcher pytorch]
    python tools/test.py configs/upernet_sgformer_s_160k_ade20k_ms.py CKPT   # multi-scale + flip
    bash tools/dist_test.sh configs/maskrcnn_sgformer_s_1x.py CKPT 8
"""
import argparse
import sys
from typing import Optional, Sequence

from mmsgformer.utils import apply_launcher_and_work_dir, load_config, parse_with_launcher


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Test (evaluate) an mmsgformer checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation logs')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model/tta_pipeline")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parse_with_launcher(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the test loop; returns the metrics dict."""
    args = parse_args(argv)
    cfg, codebase = load_config(args.config, args.cfg_options)
    apply_launcher_and_work_dir(cfg, args)
    cfg.load_from = args.checkpoint
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(f'--tta: {args.config} defines no tta_model/tta_pipeline '
                             f'(use a *_ms.py config or add them)')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        tta_model = dict(cfg.tta_model)
        tta_model['module'] = cfg.model
        cfg.model = tta_model

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    print(f'[mmsgformer] {args.config}: codebase {codebase}', file=sys.stderr)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    return runner.test()


if __name__ == '__main__':
    main()
