"""Train any mmsgformer config (mmpretrain, mmdet or mmsegmentation) with mmengine's Runner.

The codebase is detected from the config (its ``default_scope``, else the ``mmdet::`` /
``mmseg::`` / ``mmpretrain::`` prefixes of its ``_base_`` chain), mmsgformer is imported (it
registers the backbones and allow-lists the classes runner checkpoints pickle, so ``--resume``
works with torch's weights-only loading), and the Runner is built as the codebase's own
``tools/train.py`` does.

Usage::

    python tools/train.py configs/maskrcnn_sgformer_s_1x.py [--work-dir DIR] [--resume [CKPT]]
        [--amp] [--auto-scale-lr] [--cfg-options key=value ...] [--launcher pytorch]
    bash tools/dist_train.sh configs/maskrcnn_sgformer_s_1x.py 8
"""
import argparse
import sys
from typing import Optional, Sequence

from mmsgformer.utils import (adapt_for_cpu_distributed, apply_launcher_and_work_dir,
                              load_config, parse_with_launcher)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Train an mmsgformer config')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or (no value) from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch) / auto_scale_lr.base_batch_size')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate during training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. train_cfg.max_iters=10)')
    return parse_with_launcher(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    cfg, codebase = load_config(args.config, args.cfg_options)
    apply_launcher_and_work_dir(cfg, args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError(f'--auto-scale-lr: {args.config} has no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.launcher != 'none':
        adapt_for_cpu_distributed(cfg)

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    print(f'[mmsgformer] {args.config}: codebase {codebase}', file=sys.stderr)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    from mmengine.dist import get_rank, get_world_size
    print(f'[mmsgformer] rank {get_rank()}/{get_world_size()} finished training at iteration '
          f'{runner.iter} (epoch {runner.epoch})', file=sys.stderr)


if __name__ == '__main__':
    main()
