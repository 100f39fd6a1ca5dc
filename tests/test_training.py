"""Smoke runs of the real training entry points on the synthetic datasets.

* ``mim train mmdet`` (Mask R-CNN + SG-Former demo config) for 4 iterations with COCO evaluation,
  then ``--resume``: the second run continues at iteration 5 from the saved checkpoint; then
  ``mim test mmdet --checkpoint`` evaluates the resumed checkpoint.
* ``mim train mmsegmentation`` (UperNet + SG-Former demo config) for 2 iterations with mIoU, and
  ``tools/test.py`` on the saved checkpoint reproduces the same mIoU.
* ``torchrun --nproc_per_node 2 tools/train.py ... --launcher pytorch`` on CPU (gloo): both ranks
  finish.
* Unit checks of :mod:`mmsgformer.utils.synthetic_data` and the codebase detection
  (``mmsgformer.utils.detect_codebase``) of ``tools/train.py``.

Run: ``$PY -m pytest tests/test_training.py -x -q`` (about 3 minutes on 2 cores).
"""
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BIN = osp.dirname(sys.executable)
DET_CFG = osp.join(REPO, 'configs', 'demo', 'maskrcnn_sgformer_demo.py')
SEG_CFG = osp.join(REPO, 'configs', 'demo', 'upernet_sgformer_demo.py')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from mmsgformer.utils.synthetic_data import make_ade20k, make_coco
    root = str(tmp_path_factory.mktemp('synthetic'))
    make_coco(osp.join(root, 'coco'), num_train=8, num_val=3, size=128, seed=1)
    make_ade20k(osp.join(root, 'ade', 'ADEChallengeData2016'), num_train=8, num_val=3, size=96,
                seed=1)
    return root


def run(cmd, timeout=300, env=None):
    full_env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **(env or {}))
    full_env['PATH'] = BIN + os.pathsep + full_env.get('PATH', '')
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=full_env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}'
    return out


def det_options(data, iters):
    coco = osp.join(data, 'coco') + '/'
    return [
        f'train_dataloader.dataset.data_root={coco}', f'val_dataloader.dataset.data_root={coco}',
        f'test_dataloader.dataset.data_root={coco}',
        f'val_evaluator.ann_file={coco}annotations/instances_val2017.json',
        f'test_evaluator.ann_file={coco}annotations/instances_val2017.json',
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        'train_dataloader.batch_size=2', 'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1',
    ]


def seg_options(data, iters):
    ade = osp.join(data, 'ade', 'ADEChallengeData2016')
    return [
        f'train_dataloader.dataset.data_root={ade}', f'val_dataloader.dataset.data_root={ade}',
        f'test_dataloader.dataset.data_root={ade}', f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}', 'train_dataloader.batch_size=2',
        f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=1',
    ]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_mim_train_mmdet_and_resume(data, tmp_path):
    work = str(tmp_path / 'det')
    out = run(['mim', 'train', 'mmdet', DET_CFG, '--work-dir', work, '--cfg-options',
               *det_options(data, 4)])
    assert re.search(r'Iter\(train\) \[1/4\]', out) and re.search(r'Iter\(train\) \[4/4\]', out)
    assert re.search(r'coco/bbox_mAP: -?\d', out), out[-3000:]
    assert osp.isfile(osp.join(work, 'iter_2.pth')) and osp.isfile(osp.join(work, 'iter_4.pth'))

    out = run(['mim', 'train', 'mmdet', DET_CFG, '--work-dir', work, '--resume', '--cfg-options',
               *det_options(data, 6)])
    assert 'resumed' in out.lower()
    assert not re.search(r'Iter\(train\) \[[1-4]/6\]', out), 'resume restarted from scratch'
    assert re.search(r'Iter\(train\) \[5/6\]', out) and re.search(r'Iter\(train\) \[6/6\]', out)
    import mmsgformer  # noqa: F401  (weights-only loading of runner checkpoints)
    ckpt = torch.load(osp.join(work, 'iter_6.pth'), map_location='cpu')
    assert ckpt['meta']['iter'] == 6
    resumed = torch.load(osp.join(work, 'iter_4.pth'), map_location='cpu')
    assert resumed['meta']['iter'] == 4
    # the optimizer state continued: AdamW's step counter went 4 -> 6
    step = lambda c: int(next(iter(c['optimizer']['state'].values()))['step'])  # noqa: E731
    assert (step(resumed), step(ckpt)) == (4, 6)

    # mim test (mmdet's own test.py) loads the runner checkpoint weights-only and evaluates it.
    out = run(['mim', 'test', 'mmdet', DET_CFG, '--checkpoint', osp.join(work, 'iter_6.pth'),
               '--work-dir', str(tmp_path / 'det_test'), '--cfg-options',
               *det_options(data, 6)])
    assert re.search(r'coco/bbox_mAP: -?\d', out), out[-3000:]


def test_mim_train_mmseg_and_tools_test(data, tmp_path):
    work = str(tmp_path / 'seg')
    out = run(['mim', 'train', 'mmsegmentation', SEG_CFG, '--work-dir', work, '--cfg-options',
               *seg_options(data, 2)])
    assert re.search(r'Iter\(train\) \[2/2\]', out)
    miou_train = re.findall(r'mIoU: (\d+\.\d+)', out)
    assert miou_train, out[-3000:]
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt)
    out = run([sys.executable, 'tools/test.py', SEG_CFG, ckpt, '--work-dir', str(tmp_path / 't'),
               '--cfg-options', *seg_options(data, 2)])
    assert 'codebase mmseg' in out
    miou_test = re.findall(r'mIoU: (\d+\.\d+)', out)
    assert miou_test and miou_test[-1] == miou_train[-1]


def test_two_process_cpu_training(data, tmp_path):
    work = str(tmp_path / 'ddp')
    out = run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
               '--master_port', str(free_port()), 'tools/train.py', SEG_CFG, '--launcher',
               'pytorch', '--work-dir', work, '--cfg-options', *seg_options(data, 2)],
              timeout=400)
    assert 'rank 0/2 finished training at iteration 2' in out, out[-3000:]
    assert 'rank 1/2 finished training at iteration 2' in out, out[-3000:]
    assert osp.isfile(osp.join(work, 'iter_2.pth'))


# ------------------------------------------------------------------------------------------------
def test_synthetic_data_format_and_determinism(tmp_path):
    from pycocotools.coco import COCO

    from mmsgformer.utils.synthetic_data import make_ade20k, make_coco
    stats = make_coco(str(tmp_path / 'a'), num_train=6, num_val=2, size=96, seed=3)
    make_coco(str(tmp_path / 'b'), num_train=6, num_val=2, size=96, seed=3)
    for split in ('train2017', 'val2017'):
        a = open(tmp_path / 'a' / 'annotations' / f'instances_{split}.json').read()
        assert a == open(tmp_path / 'b' / 'annotations' / f'instances_{split}.json').read()
    coco = COCO(str(tmp_path / 'a' / 'annotations' / 'instances_train2017.json'))
    assert sorted(c['name'] for c in coco.loadCats(coco.getCatIds())) == [
        'circle', 'rectangle', 'triangle']
    assert len(coco.getImgIds()) == stats['train_images'] == 6
    assert len(coco.getAnnIds()) == stats['train_instances'] >= 6
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        assert mask.shape == (96, 96)
        assert abs(int(mask.sum()) - ann['area']) <= 0.15 * ann['area'] + 10
        x, y, w, h = ann['bbox']
        ys, xs = np.nonzero(mask)
        assert abs(xs.min() - x) <= 1.5 and abs(ys.min() - y) <= 1.5 and w > 4 and h > 4
    img = np.asarray(Image.open(tmp_path / 'a' / 'train2017' / '000000000001.jpg'))
    assert img.shape == (96, 96, 3) and img.std() > 10  # textured, not flat

    ade = tmp_path / 'ade'
    s = make_ade20k(str(ade), num_train=3, num_val=2, size=64, seed=3)
    assert (s['train_images'], s['val_images']) == (3, 2)
    values = set()
    for png in sorted((ade / 'annotations' / 'training').iterdir()):
        label = np.asarray(Image.open(png))
        assert label.shape == (64, 64) and label.dtype == np.uint8
        values |= set(np.unique(label).tolist())
    assert {0, 1, 4} <= values <= {0, 1, 4, 42, 44, 120}
    with pytest.raises(ValueError, match='size=32'):
        make_coco(str(tmp_path / 'c'), num_train=1, num_val=1, size=32)


def test_detect_codebase(tmp_path):
    from mmengine.config import Config

    from mmsgformer.utils import detect_codebase
    cfgs = osp.join(REPO, 'configs')
    assert detect_codebase(osp.join(cfgs, 'maskrcnn_sgformer_b_3x.py')) == 'mmdet'
    assert detect_codebase(osp.join(cfgs, 'upernet_focal_t_160k_ade20k_ms.py')) == 'mmseg'
    assert detect_codebase(osp.join(cfgs, 'sgformer_s_in1k-384px.py')) == 'mmpretrain'
    assert detect_codebase(osp.join(cfgs, 'demo', 'maskrcnn_sgformer_demo.py')) == 'mmdet'
    assert detect_codebase('whatever.py', default_scope='mmseg') == 'mmseg'
    lone = tmp_path / 'lone.py'
    lone.write_text('model = dict()\n')
    with pytest.raises(ValueError, match='cannot tell the codebase'):
        detect_codebase(str(lone))
    with pytest.raises(ValueError, match="default_scope='mmocr'"):
        detect_codebase(str(lone), default_scope='mmocr')
    # a loaded Config: its own default_scope (from the codebase's runtime base), else its file's
    # _base_ chain (the same detector analysis.flops uses)
    det = Config.fromfile(osp.join(cfgs, 'maskrcnn_sgformer_s_1x.py'))
    assert det.get('default_scope') == 'mmdet' and detect_codebase(det) == 'mmdet'
    seg = Config.fromfile(osp.join(cfgs, 'fpn_sgformer_s_80k_ade20k.py'))
    seg.default_scope = None
    assert detect_codebase(seg) == 'mmseg'
    with pytest.raises(ValueError, match='cannot tell the codebase'):
        detect_codebase(Config(dict(model=dict(type='MaskRCNN'))))
    from mmsgformer.utils import register_codebase
    with pytest.raises(ValueError, match="codebase='mmocr' must be one of"):
        register_codebase('mmocr')


def test_demo_records_metrics_before_and_after(data, tmp_path):
    """tools/demo.py's evaluation-before-training hook and metric capture (2 iterations)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('demo', osp.join(REPO, 'tools', 'demo.py'))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tools/demo.py does (tiny models, shared cores)
    try:
        before, after, seconds = demo.run_task(
            'seg', SEG_CFG, data, str(tmp_path / 'demo'), max_iters=2, verbose=False)
    finally:
        torch.set_num_threads(threads)
    for metrics in (before, after):
        assert {'mIoU', 'aAcc', 'mAcc'} <= set(metrics)
        assert all(0.0 <= metrics[k] <= 100.0 for k in ('mIoU', 'aAcc', 'mAcc'))
    assert seconds > 0
    assert osp.isfile(tmp_path / 'demo' / 'iter_2.pth')
    with pytest.raises(ValueError, match='max_iters=1'):
        demo.run_task('seg', SEG_CFG, data, str(tmp_path / 'demo1'), max_iters=1, verbose=False)
