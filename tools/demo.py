"""End-to-end CPU demo: synthetic data -> train a small SG-Former Mask R-CNN and UperNet -> metrics.

Steps (about 10 minutes on 2 CPU cores, no downloads):

1. :mod:`mmsgformer.utils.synthetic_data` (also ``tools/misc/make_synthetic_data.py``) writes a
   COCO-format shapes dataset (160x160) and an ADE20K-format scenes dataset (128x128) under
   ``--data-root``.
2. Detection: ``configs/demo/maskrcnn_sgformer_demo.py`` (the real Mask R-CNN + SG-Former config,
   shrunk) is evaluated with mmdet's COCO metric right after initialisation, trained, and
   evaluated again.
3. Segmentation: the same for ``configs/demo/upernet_sgformer_demo.py`` with mmseg's mIoU.
4. The trained models' predictions on a few validation images are drawn next to the ground truth
   (``WORK_DIR/{det,seg}/predictions/*.png``, ``--pictures``).
5. A before/after table is printed and written to ``WORK_DIR/demo_results.json``. The exit status
   is 1 when a model did not learn (box mAP / mIoU not clearly above the untrained model).

Usage::

    python tools/demo.py [--data-root data/synthetic] [--work-dir work_dirs/demo]
                         [--det-iters 300] [--seg-iters 300] [--skip-det] [--skip-seg] [--verbose]
                         [--pictures 3]
"""
import argparse
import contextlib
import io
import json
import numbers
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: (metric key, label, scale to print as %) of each task.
DET_METRICS = (('coco/bbox_mAP', 'box mAP', 100.), ('coco/bbox_mAP_50', 'box AP50', 100.),
               ('coco/segm_mAP', 'mask mAP', 100.))
SEG_METRICS = (('mIoU', 'mIoU', 1.), ('aAcc', 'pixel acc', 1.))
#: A task "learned" when its main metric gains at least this many points (percent).
MIN_GAIN = {'det': 10.0, 'seg': 10.0}


def _make_hooks():
    from mmengine.hooks import Hook

    class EvaluateBeforeTraining(Hook):
        """Run the validation loop once on the freshly initialised model (before iteration 1)
        and record every validation result with the iteration it was computed at."""

        priority = 'LOWEST'

        def __init__(self) -> None:
            self.records: List[Tuple[int, Dict[str, float]]] = []

        def before_train(self, runner) -> None:
            runner.val_loop.run()

        def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
            # mmseg reports numpy float32 scalars: numbers.Real covers them and Python floats
            self.records.append((runner.iter, {k: float(v) for k, v in (metrics or {}).items()
                                               if isinstance(v, numbers.Real)}))

    class Progress(Hook):
        """One short line every ``interval`` iterations (the runner's own log is quieted)."""

        priority = 'LOW'

        def __init__(self, interval: int, name: str, stream=None) -> None:
            self.interval, self.name, self.t0 = interval, name, None
            self.stream = stream or sys.stdout

        def before_train(self, runner) -> None:
            self.t0 = time.time()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            it = runner.iter + 1
            if it % self.interval == 0 or it == runner.max_iters:
                total = (outputs or {}).get('loss', float('nan'))  # the total loss
                loss = float(total.detach()) if hasattr(total, 'detach') else float(total)
                print(f'  [{self.name}] iter {it:4d}/{runner.max_iters}  loss {loss:7.4f}  '
                      f'{time.time() - self.t0:6.1f} s', file=self.stream, flush=True)

    return EvaluateBeforeTraining, Progress


def _set_iters(cfg, max_iters: int) -> None:
    """Point the schedule of a demo config at ``max_iters`` iterations (the warm-up is kept,
    clipped to the first half of the run)."""
    if max_iters < 2:
        raise ValueError(f'max_iters={max_iters} must be >= 2 (evaluation before and after)')
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = max_iters
    cfg.default_hooks.checkpoint.interval = max_iters
    if len(cfg.param_scheduler) > 1:
        warmup_end = min(cfg.param_scheduler[0]['end'], max_iters // 2)
        cfg.param_scheduler[0]['end'] = warmup_end
        cfg.param_scheduler[-1]['begin'] = warmup_end
    cfg.param_scheduler[-1]['end'] = max_iters


def draw_val_predictions(runner, task: str, out_dir: str, num: int = 3,
                         score_thr: float = 0.3) -> List[str]:
    """Draw the trained model's predictions on the first ``num`` validation images next to
    their ground truth (left: ground truth, right: prediction) with the codebase's own
    visualizer (``DetLocalVisualizer`` / ``SegLocalVisualizer``); returns the PNG paths."""
    import mmcv
    import torch
    os.makedirs(out_dir, exist_ok=True)
    vis = runner.visualizer
    vis.dataset_meta = runner.val_dataloader.dataset.metainfo
    extra = {'pred_score_thr': score_thr} if task == 'det' else {}
    runner.model.eval()
    written: List[str] = []
    for data in runner.val_dataloader:
        with torch.no_grad():
            samples = runner.model.val_step(data)
        for sample in samples:
            if len(written) >= num:
                return written
            name = osp.splitext(osp.basename(sample.img_path))[0]
            path = osp.join(out_dir, f'{task}_{name}.png')
            image = mmcv.imread(sample.img_path, channel_order='rgb')
            vis.add_datasample(f'{task}_{name}', image, sample, draw_gt=True, draw_pred=True,
                               show=False, out_file=path, **extra)
            written.append(path)
    return written


def run_task(task: str, config: str, data_root: str, work_dir: str, max_iters: int,
             verbose: bool, num_pictures: int = 0
             ) -> Tuple[Dict[str, float], Dict[str, float], float]:
    """Train one demo config; returns (metrics before training, after training, seconds).
    With ``num_pictures`` it then draws that many validation predictions next to the ground
    truth into ``work_dir/predictions/``."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    import mmsgformer  # noqa: F401

    cfg = Config.fromfile(config)
    if task == 'det':
        root = osp.join(data_root, 'coco') + '/'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[loader].dataset.data_root = root
        cfg.val_evaluator.ann_file = root + 'annotations/instances_val2017.json'
        cfg.test_evaluator = cfg.val_evaluator
    else:
        root = osp.join(data_root, 'ade', 'ADEChallengeData2016')
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[loader].dataset.data_root = root
    _set_iters(cfg, max_iters)
    cfg.work_dir = work_dir
    if not verbose:
        cfg.log_level = 'WARNING'
    EvaluateBeforeTraining, Progress = _make_hooks()
    runner = Runner.from_cfg(cfg)
    recorder = EvaluateBeforeTraining()
    runner.register_hook(recorder)
    runner.register_hook(Progress(max(max_iters // 10, 1), task, sys.stdout))
    t0 = time.time()
    if verbose:
        runner.train()
    else:  # pycocotools prints its full AP/AR summary to stdout at every evaluation
        with contextlib.redirect_stdout(io.StringIO()):
            runner.train()
    seconds = time.time() - t0
    if len(recorder.records) < 2:
        raise RuntimeError(f'{task}: expected validation before and after training, got '
                           f'{recorder.records}')
    if num_pictures > 0:
        pictures = draw_val_predictions(runner, task, osp.join(work_dir, 'predictions'),
                                        num_pictures)
        print(f'  {task}: ground truth | prediction on {len(pictures)} validation images -> '
              f'{osp.join(work_dir, "predictions")}', flush=True)
    return recorder.records[0][1], recorder.records[-1][1], seconds


def _table(rows: Sequence[Tuple[str, str, float, float]]) -> str:
    lines = [f'| {"task":<30} | {"metric":<9} | {"untrained":>9} | {"trained":>9} |',
             f'|{"-" * 32}|{"-" * 11}|{"-" * 11}|{"-" * 11}|']
    for task, label, before, after in rows:
        lines.append(f'| {task:<30} | {label:<9} | {before:9.1f} | {after:9.1f} |')
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'synthetic'))
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'demo'))
    parser.add_argument('--det-iters', type=int, default=300)
    parser.add_argument('--seg-iters', type=int, default=300)
    parser.add_argument('--skip-det', action='store_true')
    parser.add_argument('--skip-seg', action='store_true')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic data')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch intra-op threads (default 1: these tiny models run faster '
                        'single-threaded, and a busy machine is not oversubscribed)')
    parser.add_argument('--verbose', action='store_true', help="show the runners' full logs")
    parser.add_argument('--pictures', type=int, default=3,
                        help='validation images drawn (ground truth | prediction) per task '
                        'after training, under WORK_DIR/<task>/predictions (0: none)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads < 1:
        raise ValueError(f'--threads={args.threads} must be >= 1')
    import torch
    torch.set_num_threads(args.threads)
    from mmsgformer.utils.synthetic_data import make_ade20k, make_coco

    t_start = time.time()
    os.makedirs(args.work_dir, exist_ok=True)
    print(f'[1/3] synthetic data -> {args.data_root}', flush=True)
    if not args.skip_det:
        print('  coco :', make_coco(osp.join(args.data_root, 'coco'), num_train=96, num_val=24,
                                   size=160, seed=args.seed))
    if not args.skip_seg:
        print('  ade20k:', make_ade20k(osp.join(args.data_root, 'ade', 'ADEChallengeData2016'),
                                      num_train=64, num_val=16, size=128, seed=args.seed))
    rows, results, learned = [], {}, True
    tasks = []
    if not args.skip_det:
        tasks.append(('det', 'Mask R-CNN + SG-Former (tiny)', 'maskrcnn_sgformer_demo.py',
                      args.det_iters, DET_METRICS))
    if not args.skip_seg:
        tasks.append(('seg', 'UperNet + SG-Former (tiny)', 'upernet_sgformer_demo.py',
                      args.seg_iters, SEG_METRICS))
    for step, (task, title, config, iters, metrics) in enumerate(tasks, start=2):
        print(f'[{step}/3] {title}: evaluate, train {iters} iterations, evaluate', flush=True)
        before, after, seconds = run_task(
            task, osp.join(REPO, 'configs', 'demo', config), args.data_root,
            osp.join(args.work_dir, task), iters, args.verbose, args.pictures)
        results[task] = dict(config=f'configs/demo/{config}', iters=iters,
                             train_seconds=round(seconds, 1), before=before, after=after)
        for key, label, scale in metrics:
            rows.append((title, label, before.get(key, 0.0) * scale,
                         after.get(key, 0.0) * scale))
        key, _, scale = metrics[0]
        gain = (after.get(key, 0.0) - before.get(key, 0.0)) * scale
        results[task]['learned'] = bool(gain >= MIN_GAIN[task])
        learned &= results[task]['learned']
        print(f'  {title}: {metrics[0][1]} {before.get(key, 0.0) * scale:.1f} -> '
              f'{after.get(key, 0.0) * scale:.1f} after {iters} iterations ({seconds:.0f} s)',
              flush=True)
    print()
    print(_table(rows))
    total = time.time() - t_start
    print(f'\ntotal {total:.0f} s; results -> {osp.join(args.work_dir, "demo_results.json")}')
    results['total_seconds'] = round(total, 1)
    with open(osp.join(args.work_dir, 'demo_results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    if not learned:
        print(f'NOT LEARNED: a main metric gained less than {MIN_GAIN} points', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
