"""The installed OpenMMLab stack: compiled mmcv ops, every codebase's models, mmsgformer."""
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_mmcv_compiled_ops_import_and_nms_known_answer():
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0., 0., 10., 10.],     # kept (highest score)
                          [1., 1., 11., 11.],     # IoU 81/121 = 0.67 with box 0 -> suppressed
                          [20., 20., 30., 30.],   # disjoint -> kept
                          [0., 0., 10., 9.]])     # IoU 0.9 with box 0 -> suppressed
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [3, 2]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.95, 0.7]))

    roi_align = RoIAlign(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    feats = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    out = roi_align(feats, rois)
    # aligned=True, one sample per bin at the bin centres (1, 1), (1, 3), (3, 1), (3, 3) -> shifted
    # by -0.5: bilinear samples at (0.5, 0.5) ... of the 4x4 ramp.
    expected = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])
    torch.testing.assert_close(out, expected)


def test_codebases_import():
    import mmdet.models  # noqa: F401
    import mmpretrain.models  # noqa: F401
    import mmseg.models  # noqa: F401

    import mmsgformer  # noqa: F401


def _tested_pins(torch_version: str) -> dict:
    """The pins of requirements/constraints.txt for ``torch_version`` (its ``#@torchX`` lines
    replace the main ones), as tools/setup_env.sh applies them."""
    pins, overrides = {}, {}
    for line in (REPO / 'requirements' / 'constraints.txt').read_text().splitlines():
        target = pins
        if line.startswith(f'#@torch{torch_version} '):
            target, line = overrides, line.split(' ', 1)[1]
        elif line.startswith('#'):
            continue
        if '==' in line:
            name, version = line.split('==')
            target[name.strip()] = version.strip()
    return {**pins, **overrides}


def test_versions_are_the_tested_stack():
    from importlib import metadata
    torch_version = torch.__version__.split('+')[0]
    pins = _tested_pins(torch_version)
    assert pins['torch'] == torch_version, 'this torch is not a tested set of constraints.txt'
    for name in ('torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain',
                 'openmim', 'numpy', 'opencv-python'):
        if name in pins:
            assert metadata.version(name).split('+')[0] == pins[name], name
    assert {'mmcv', 'mmdet', 'mmsegmentation', 'mmpretrain'} <= set(pins)


def test_import_mmsgformer_does_not_import_mmdet_or_mmseg():
    code = ('import sys, mmsgformer; '
            'bad = [m for m in ("mmdet", "mmseg", "mmpretrain") if m in sys.modules]; '
            'print(bad); sys.exit(1 if bad else 0)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mim_is_installed():
    proc = subprocess.run([sys.executable, '-m', 'mim', '--version'], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert '0.3.9' in proc.stdout
