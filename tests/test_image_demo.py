"""tools/image_demo.py: the codebases' inferencers draw a folder of images; bad input is named.

Random weights, tiny models: the UperNet demo config (mmseg, with --significance) and a tiny
SG-Former classifier (mmpretrain). The detection path (DetInferencer) is the same code with
another inferencer class and is left to the manual check in the README (it needs mmcv's ops and
is slower to build).
"""
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools'))
SEG_DEMO = osp.join(REPO, 'configs', 'demo', 'upernet_sgformer_demo.py')
TINY = dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 4, 4], depths=[2, 2, 2, 1])


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for name, (h, w) in (('a.png', (96, 128)), ('b.jpg', (80, 80))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / 'broken.jpg').write_bytes(b'not an image')
    (folder / 'notes.txt').write_text('ignored: not an image extension')
    return folder


@pytest.fixture(scope='module')
def seg(images):
    from image_demo import build_inferencer, load_config
    torch.manual_seed(0)
    cfg, codebase = load_config(SEG_DEMO)
    return build_inferencer(cfg, codebase, SEG_DEMO, None, 'cpu'), codebase


def test_folder_with_a_broken_image(seg, images, tmp_path, capsys):
    from image_demo import list_images, run
    inferencer, codebase = seg
    assert codebase == 'mmseg'
    paths = list_images(str(images))
    assert [osp.basename(p) for p in paths] == ['a.png', 'b.jpg', 'broken.jpg']
    result = run(paths, inferencer, codebase, str(tmp_path), True, 'RANDOM WEIGHTS',
                 progress=False)
    assert result['failed'] == [str(images / 'broken.jpg')]
    assert sorted(osp.basename(p) for p in result['written']) == [
        'a.png', 'a_significance.png', 'b.png', 'b_significance.png']
    # the segmentation drawing covers the whole image
    assert Image.open(tmp_path / 'a.png').size == (128, 96)
    assert Image.open(tmp_path / 'b.png').size == (80, 80)
    err = capsys.readouterr().err
    assert f'{images / "broken.jpg"}: cannot read the image' in err


def test_classifier_and_cli_exit_status(images, tmp_path, capsys):
    from image_demo import main
    cfg = tmp_path / 'tiny_cls.py'
    cfg.write_text(f"_base_ = [{osp.join(REPO, 'configs', 'sgformer_s_in1k.py')!r}]\n"
                   f"model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY!r}), "
                   "mlp_ratio=2), head=dict(in_channels=128, num_classes=5))\n")
    out = tmp_path / 'out'
    assert main([str(images), str(cfg), '--out-dir', str(out)]) == 1  # broken.jpg failed
    assert sorted(p.name for p in out.iterdir()) == ['a.png', 'b.png']
    captured = capsys.readouterr()
    assert '2 of 3 image(s) drawn (mmpretrain, RANDOM WEIGHTS' in captured.out
    assert main([str(images / 'a.png'), str(cfg), '--out-dir', str(out)]) == 0


def test_bad_inputs_are_named(images, tmp_path, capsys):
    from image_demo import main
    missing = tmp_path / 'missing.jpg'
    assert main([str(missing), SEG_DEMO]) == 1
    assert f'{missing}: no such image file or folder' in capsys.readouterr().err

    unknown = tmp_path / 'plain.py'
    unknown.write_text("model = dict(type='Nothing')\n")
    assert main([str(images / 'a.png'), str(unknown)]) == 1
    assert f'{unknown}: unknown codebase' in capsys.readouterr().err

    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.not_this_model.weight': torch.zeros(3)}}, str(other))
    assert main([str(images / 'a.png'), SEG_DEMO, '--checkpoint', str(other),
                 '--out-dir', str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err
    assert f'{other}: does not fit the model of {SEG_DEMO}: only 0 of its' in err
