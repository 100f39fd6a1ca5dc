"""tools/collect_results.py on work dirs of real (tiny) mmengine runs.

One module-scoped fixture makes three runs of the UperNet demo config on a tiny synthetic ADE20K
set with mmengine's Runner: a finished 1-iteration run, a 3-iteration run interrupted by an
exception at iteration 2 (after its checkpoint and evaluation at iteration 1), and a test-only
run of the finished checkpoint. The collector must report the final evaluation of the finished
run and of the test run (exactly the metrics the runner returned) and mark the interrupted and
the missing runs instead of filling them in.
"""
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools'))
SEG_DEMO = osp.join(REPO, 'configs', 'demo', 'upernet_sgformer_demo.py')
pytestmark = pytest.mark.slow  # three real (1-3 iteration) runner runs in the fixture


class Interrupted(RuntimeError):
    """Raised by the StopAt hook to kill a run mid-training."""


def _write_config(folder, name, data_root, max_iters, val_interval, by_epoch_metrics=False):
    path = osp.join(folder, name + '.py')
    with open(path, 'w') as f:
        f.write(f"""_base_ = [{SEG_DEMO!r}]
data_root = {data_root!r}
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))  # BN needs 2
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={max_iters}, val_interval={val_interval})
default_hooks = dict(checkpoint=dict(interval=1),
                     logger=dict(interval=1, log_metric_by_epoch={by_epoch_metrics}))
visualizer = dict(name={name!r})  # one per run: the runners share this process
log_level = 'WARNING'
""")
    return path


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    import torch
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from mmsgformer.utils import load_config
    from mmsgformer.utils.synthetic_data import make_ade20k

    class Recorder(Hook):
        priority = 'LOWEST'

        def __init__(self, stop_at=None):
            self.metrics, self.stop_at = [], stop_at

        def after_val_epoch(self, runner, metrics=None):
            self.metrics.append((runner.iter, dict(metrics or {})))

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if self.stop_at is not None and runner.iter + 1 == self.stop_at:
                raise Interrupted(f'killed at iteration {self.stop_at}')

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('collect')
    data = osp.join(str(root), 'ade', 'ADEChallengeData2016')
    make_ade20k(data, num_train=2, num_val=1, size=64, seed=3)
    out = {}

    def start(name, max_iters, val_interval, stop_at=None, by_epoch_metrics=False):
        cfg, _ = load_config(_write_config(str(root), name, data, max_iters, val_interval,
                                           by_epoch_metrics))
        cfg.work_dir = osp.join(str(root), 'work_dirs', name)
        runner = Runner.from_cfg(cfg)
        recorder = Recorder(stop_at)
        runner.register_hook(recorder)
        return runner, recorder

    # mmengine's default LoggerHook(log_metric_by_epoch=True): the evaluation is logged at
    # step = epoch = 0 although it ran at iteration 1
    runner, rec = start('tiny_seg', 1, 1, by_epoch_metrics=True)
    runner.train()
    out['finished'] = (runner.work_dir, rec.metrics)
    ckpt = osp.join(runner.work_dir, 'iter_1.pth')

    runner, rec = start('tiny_seg_long', 3, 1, stop_at=2)
    with pytest.raises(Interrupted):
        runner.train()
    out['interrupted'] = (runner.work_dir, rec.metrics)

    cfg, _ = load_config(_write_config(str(root), 'tiny_seg_ms', data, 1, 1))
    cfg.work_dir = osp.join(str(root), 'work_dirs', 'tiny_seg_ms')
    cfg.load_from = ckpt
    runner = Runner.from_cfg(cfg)
    out['test'] = (runner.work_dir, runner.test())
    out['root'] = osp.join(str(root), 'work_dirs')
    return out


def _rows():
    from mmsgformer.results import PaperMetric, PaperRow
    return (
        PaperRow('tiny ADE', 'finished + test', (
            PaperMetric('mIoU SS', 'mIoU', 'tiny_seg', 49.9),
            PaperMetric('mIoU MS', 'mIoU', 'tiny_seg_ms', 51.5))),
        PaperRow('tiny ADE', 'interrupted', (PaperMetric('mIoU', 'mIoU', 'tiny_seg_long', 50.0),)),
        PaperRow('tiny ADE', 'never run', (PaperMetric('mIoU', 'mIoU', 'tiny_seg_none', 1.0),)),
    )


def test_finished_run(runs):
    from collect_results import read_run
    work_dir, metrics = runs['finished']
    run = read_run(work_dir)
    assert (run.config, run.kind, run.by_epoch, run.total, run.reached) == (
        'tiny_seg', 'train', False, 1, 1)
    assert run.status == 'finished' and run.last_checkpoint == 'iter_1.pth'
    assert metrics[-1][0] == 1  # the runner evaluated at iteration 1 (logged as step 0) ...
    import glob
    import json
    with open(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))[0]) as f:
        steps = [json.loads(ln)['step'] for ln in f if '"mIoU"' in ln]
    assert steps == [0]
    for key in ('mIoU', 'aAcc', 'mAcc'):  # ... and the collector read exactly those numbers
        assert run.final[key] == pytest.approx(float(metrics[-1][1][key]), abs=1e-12)


def test_interrupted_run_is_not_filled(runs):
    from collect_results import read_run
    work_dir, metrics = runs['interrupted']
    run = read_run(work_dir)
    assert [it for it, _ in metrics] == [1]  # evaluated at 1, killed at 2 of 3
    assert (run.total, run.reached, run.last_eval_step) == (3, 2, 1)
    assert run.last_checkpoint == 'iter_2.pth'  # saved at 2 just before the kill
    assert run.status == 'unfinished' and run.final == {}
    assert run.progress() == 'iter 2/3'


def test_test_run(runs):
    from collect_results import read_run
    work_dir, metrics = runs['test']
    run = read_run(work_dir)
    assert (run.kind, run.status, run.config) == ('test', 'finished', 'tiny_seg_ms')
    assert run.final['mIoU'] == pytest.approx(float(metrics['mIoU']), abs=1e-12)


def test_table_fills_only_finished_runs(runs):
    from collect_results import expand_work_dirs, paper_table, read_run
    found = expand_work_dirs([runs['root']])
    assert sorted(osp.basename(d) for d in found) == ['tiny_seg', 'tiny_seg_long', 'tiny_seg_ms']
    table = paper_table([read_run(d) for d in found], _rows()).splitlines()
    ss = read_run(runs['finished'][0]).final['mIoU']
    ms = read_run(runs['test'][0]).final['mIoU']
    assert table[2].endswith(f'| 49.9 / 51.5 | {ss:.1f} / {ms:.1f} |'), table[2]
    assert table[3].endswith('| 50.0 | tiny_seg_long: unfinished (iter 2/3) |'), table[3]
    assert table[4].endswith('| 1.0 | not run |'), table[4]


def test_cli_marks_missing_and_bad_dirs(runs, tmp_path, capsys):
    from collect_results import main
    empty = tmp_path / 'not_a_run'
    empty.mkdir()
    code = main([runs['finished'][0], str(tmp_path / 'missing'), str(empty)])
    out, err = capsys.readouterr()
    assert code == 1
    assert f'{tmp_path / "missing"}: no such directory' in err
    assert f'{empty}: no dumped config' in err
    # the packaged paper table: every row is "not run" except none (the demo has no paper row)
    assert out.count('| not run |') == 9
    assert '| `tiny_seg.py` |' in out and '| iter 1/1 | finished |' in out
