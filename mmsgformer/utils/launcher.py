"""Launcher and work-dir handling shared by ``tools/train.py`` and ``tools/test.py``."""
import argparse
import os
import os.path as osp
from typing import Any, Optional, Sequence

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--launcher`` (one of :data:`LAUNCHERS`) and ``--local-rank`` to ``parser``."""
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_with_launcher(parser: argparse.ArgumentParser,
                        argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Add the launcher options, parse ``argv``, export ``LOCAL_RANK`` if it is not set."""
    add_launcher_args(parser)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def apply_launcher_and_work_dir(cfg: Any, args: argparse.Namespace) -> None:
    """Set ``cfg.launcher`` and ``cfg.work_dir`` (``args.work_dir``, else the config's, else
    ``./work_dirs/<config name>``)."""
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])


def adapt_for_cpu_distributed(cfg: Any) -> bool:
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
