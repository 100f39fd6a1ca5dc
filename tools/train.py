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
import os
import os.path as osp
import re
import sys
from typing import List, Optional, Sequence

CODEBASES = ('mmdet', 'mmseg', 'mmpretrain')
_PREFIX_RE = re.compile(r"""['"](mmdet|mmseg|mmpretrain)::""")
_BASE_RE = re.compile(r"""['"]([^'"]+\.py)['"]""")


def _scan_prefixes(path: str, seen: set) -> List[str]:
    """Codebase prefixes (``mmdet::`` ...) used by ``path`` and its local ``_base_`` files."""
    path = osp.abspath(path)
    if path in seen or not osp.isfile(path):
        return []
    seen.add(path)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    found = _PREFIX_RE.findall(text)
    base_block = re.search(r'^_base_\s*=\s*(\[.*?\]|[^\n]+)', text, re.S | re.M)
    if base_block:
        for rel in _BASE_RE.findall(base_block.group(1)):
            if '::' not in rel:
                found += _scan_prefixes(osp.join(osp.dirname(path), rel), seen)
    return found


def detect_codebase(config_path: str, default_scope: Optional[str] = None) -> str:
    """The OpenMMLab codebase a config belongs to: ``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``.

    ``default_scope`` (the loaded config's value) wins; otherwise the ``codebase::`` prefixes of
    the ``_base_`` chain decide, and they must name a single codebase.
    """
    if default_scope is not None:
        if default_scope not in CODEBASES:
            raise ValueError(f'default_scope={default_scope!r} of {config_path} must be one of '
                             f'{CODEBASES}')
        return default_scope
    found = sorted(set(_scan_prefixes(config_path, set())))
    if len(found) != 1:
        raise ValueError(f'{config_path}: cannot tell the codebase: it has no default_scope and '
                         f'its _base_ chain uses the prefixes {found}; exactly one of '
                         f'{[c + "::" for c in CODEBASES]} is needed')
    return found[0]


def load_config(config_path: str, cfg_options: Optional[dict] = None):
    """``Config.fromfile`` + ``--cfg-options``; sets ``default_scope`` to the detected codebase
    and imports mmsgformer (backbones + checkpoint allow-list). Returns ``(cfg, codebase)``."""
    from mmengine.config import Config
    import mmsgformer  # noqa: F401  (registers the backbones, allow-lists checkpoint classes)
    if not osp.isfile(config_path):
        raise ValueError(f'config={config_path!r} is not a file')
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    codebase = detect_codebase(config_path, cfg.get('default_scope', None))
    cfg.default_scope = codebase
    return cfg, codebase


def adapt_for_cpu_distributed(cfg) -> bool:
    """Make a multi-process run work without GPUs; returns True when it changed ``cfg``.

    mmengine wraps the model with ``device_ids=[LOCAL_RANK]``, which DistributedDataParallel
    rejects for a CPU model, its pytorch launcher calls ``torch.cuda.set_device`` and the
    packaged runtimes ask for NCCL. Without CUDA this switches to ``device_ids=None`` and the
    gloo backend (explicit user settings are kept) and, for ``--launcher pytorch``, initialises
    the process group itself.
    """
    import torch
    if torch.cuda.is_available():
        return False
    if cfg.get('model_wrapper_cfg', None) is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    env = cfg.setdefault('env_cfg', {})
    dist_cfg = env.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
    # mmengine's pytorch launcher calls torch.cuda.set_device(LOCAL_RANK), which fails without a
    # GPU; with the process group already initialised (torchrun's env://) it skips that step.
    import torch.distributed as dist
    if cfg.get('launcher') == 'pytorch' and not dist.is_initialized():
        dist.init_process_group(backend=dist_cfg['backend'])
    return True


def parse_with_launcher(parser: argparse.ArgumentParser,
                        argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Add the launcher options shared by train.py and test.py, parse, export LOCAL_RANK."""
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def apply_launcher_and_work_dir(cfg, args: argparse.Namespace) -> None:
    """Set ``cfg.launcher`` and ``cfg.work_dir`` (``--work-dir``, else the config's, else
    ``./work_dirs/<config name>``)."""
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])


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
