"""Draw a model's predictions on images with the codebase's own inferencer.

The codebase is read from the config (``default_scope``: mmpretrain, mmdet or mmseg) and its
inferencer does the work: mmpretrain's ``ImageClassificationInferencer``, mmdet's
``DetInferencer``, mmseg's ``MMSegInferencer``. The drawn result of ``IMAGE`` is saved as
``OUT_DIR/<image name>.png``; a folder of images gives a folder of pictures (with a progress
bar). ``--significance`` (SG-Former backbones) also saves ``OUT_DIR/<image
name>_significance.png``: every hybrid-scale block's significance map and the token
reallocation of the self-guided block after it, computed on the very input the model gets
(the inferencer's pipeline and data preprocessor).

Without ``--checkpoint`` the model has random weights (the picture says so) and nothing is
downloaded: the ``init_cfg`` / ``pretrained`` entries of the config's model are dropped.

Bad input gives one line naming the file and the problem (missing or unreadable image, config
of an unknown codebase, a checkpoint that does not fit the config's model); a folder run goes on
with the other images, and the exit status is 1 if any image failed.

Usage::

    python tools/image_demo.py IMAGE_OR_DIR CONFIG [--checkpoint CKPT] [--out-dir DIR]
        [--significance] [--device cpu] [--score-thr 0.3]
"""
import argparse
import os
import os.path as osp
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: default_scope -> (inferencer module, class name).
INFERENCERS = {
    'mmpretrain': ('mmpretrain.apis', 'ImageClassificationInferencer'),
    'mmdet': ('mmdet.apis', 'DetInferencer'),
    'mmseg': ('mmseg.apis', 'MMSegInferencer'),
}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
class InputError(ValueError):
    """Bad user input: the message names the file and the problem."""


def load_config(config_path: str):
    """``(cfg, codebase)`` (:func:`mmsgformer.utils.load_config`) with the model's pretrained
    entries dropped; :class:`InputError` naming the file when it is missing or of an unknown
    codebase."""
    from mmsgformer.deploy import drop_pretrained
    from mmsgformer.utils import load_config as load
    if not osp.isfile(config_path):
        raise InputError(f'{config_path}: no such config file')
    try:
        cfg, codebase = load(config_path)
    except ValueError as exc:  # the codebase detector names the file and the rule
        raise InputError(f'{config_path}: unknown codebase ({exc})') from exc
    except Exception as exc:  # syntax errors, missing _base_ files, ...
        raise InputError(f'{config_path}: cannot load the config '
                         f'({type(exc).__name__}: {exc})') from exc
    if codebase not in INFERENCERS or 'model' not in cfg:
        raise InputError(f'{config_path}: no model of a known codebase ({sorted(INFERENCERS)})')
    cfg.model = drop_pretrained(cfg.model)
    return cfg, codebase


def build_inferencer(cfg, codebase: str, config_path: str, checkpoint: Optional[str],
                     device: str):
    """The codebase's inferencer for ``cfg`` (random weights without ``checkpoint``)."""
    import importlib
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise InputError(f'{checkpoint}: no such checkpoint file')
    from mmengine.registry import init_default_scope
    module, name = INFERENCERS[codebase]
    cls = getattr(importlib.import_module(module), name)
    init_default_scope(codebase)  # mmpretrain's inferencer builds its pipeline in the current scope
    if codebase == 'mmpretrain':
        inferencer = cls(model=cfg, pretrained=checkpoint or False, device=device)
    else:
        inferencer = cls(model=cfg, weights=checkpoint, device=device)
        inferencer.show_progress = False  # one bar for the whole folder instead
    if checkpoint is not None:
        from mmsgformer.deploy import check_checkpoint_fits
        try:
            check_checkpoint_fits(inferencer.model, checkpoint, config_path)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    return inferencer


def list_images(path: str) -> List[str]:
    """The image files of a folder (sorted), or ``[path]`` for a file."""
    if osp.isdir(path):
        return sorted(osp.join(path, f) for f in os.listdir(path)
                      if f.lower().endswith(IMAGE_EXTENSIONS))
    return [path]


def check_image(path: str) -> Tuple[int, int]:
    """``(H, W)`` of a readable image; :class:`InputError` naming the file otherwise."""
    import mmcv
    if not osp.isfile(path):
        raise InputError(f'{path}: no such image file')
    try:
        img = mmcv.imread(path)
    except Exception as exc:
        raise InputError(f'{path}: cannot read the image ({exc})') from exc
    if img is None or img.size == 0:
        raise InputError(f'{path}: cannot read the image (not an image format that can be '
                         'decoded)')
    return img.shape[:2]


def draw_predictions(inferencer, codebase: str, image: str, out_dir: str,
                     score_thr: float) -> str:
    """Run the inferencer on one image and save its drawing to ``out_dir/<name>.png``."""
    import mmcv
    stem = osp.splitext(osp.basename(image))[0]
    out = osp.join(out_dir, stem + '.png')
    if codebase == 'mmpretrain':
        inferencer(image, show_dir=out_dir)  # writes out_dir/<stem>.png itself
        return out
    if codebase == 'mmdet':
        result = inferencer(image, return_vis=True, no_save_vis=True, pred_score_thr=score_thr)
    else:
        result = inferencer(image, return_vis=True)
    vis = result['visualization']  # a list (mmdet) or, for one image, the array (mmseg)
    vis = vis[0] if isinstance(vis, (list, tuple)) else vis
    mmcv.imwrite(np.ascontiguousarray(vis[..., ::-1]), out)  # RGB -> BGR file
    return out


def model_input(inferencer, image: str) -> Tuple[Any, Tuple[int, int]]:
    """The normalized ``(1, 3, H, W)`` tensor the model gets for ``image`` (the inferencer's
    pipeline + the model's data preprocessor) and the unpadded ``(h, w)`` inside it."""
    batch = next(iter(inferencer.preprocess([image], batch_size=1)))
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], dict):
        batch = batch[1]  # mmdet yields (original inputs, data)
    data = inferencer.model.data_preprocessor(batch, False)
    x = data['inputs']
    h, w = x.shape[-2:]
    samples = data.get('data_samples') or []
    if samples and 'img_shape' in samples[0].metainfo:
        h, w = samples[0].metainfo['img_shape'][:2]
    return x, (int(min(h, x.shape[-2])), int(min(w, x.shape[-1])))


def draw_significance(inferencer, image: str, out_dir: str, weights: str) -> str:
    """Save ``out_dir/<name>_significance.png``: per hybrid-scale block of the SG-Former
    backbone its min-max scaled significance map and the group size ``g`` each region gets in the
    next self-guided block (``1/g`` resolution), over the image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import torch

    from mmsgformer.analysis.significance_maps import reallocation_map, resize_nearest
    from mmsgformer.models import SGFormer
    backbone = inferencer.model.backbone
    if not isinstance(backbone, SGFormer):
        raise InputError(f'--significance: the backbone is {type(backbone).__name__}; '
                         'significance maps exist only for SGFormer backbones')
    x, (h, w) = model_input(inferencer, image)
    with torch.no_grad():
        _, records = backbone(x, return_significance=True)
    rgb = mmcv.imread(image, channel_order='rgb')
    H, W = rgb.shape[:2]

    def over_image(grid: torch.Tensor) -> np.ndarray:
        """(h_s, w_s) stage map -> (H, W) over the original image (crop the padding)."""
        full = resize_nearest(grid[None].double(), tuple(x.shape[-2:]))[:, :h, :w]
        return resize_nearest(full, (H, W))[0].numpy()

    fig, axes = plt.subplots(2, len(records) + 1, squeeze=False,
                             figsize=(2.2 * (len(records) + 1), 4.8))
    for ax in axes.flat:
        ax.axis('off')
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title('input', fontsize=8)
    axes[1, 0].text(0.5, 0.5, weights, ha='center', va='center', fontsize=7, wrap=True,
                    color='red' if weights.startswith('RANDOM') else 'black')
    for col, rec in enumerate(records, start=1):
        sig = over_image(rec.significance[0])
        lo, hi = float(sig.min()), float(sig.max())
        axes[0, col].imshow(rgb)
        axes[0, col].imshow((sig - lo) / (hi - lo) if hi > lo else np.zeros_like(sig),
                            cmap='inferno', alpha=0.6, vmin=0, vmax=1)
        axes[0, col].set_title(f'stage {rec.stage + 1} block {rec.block}: significance',
                               fontsize=7)
        groups = over_image(reallocation_map(rec.significance[:1], rec.sr_ratio)[0])
        axes[1, col].imshow(rgb)
        im = axes[1, col].imshow(np.log2(groups), cmap='coolwarm_r', alpha=0.6)
        axes[1, col].set_title(f'stage {rec.stage + 1} block {rec.block + 1}: group g',
                               fontsize=7)
        ticks = sorted(set(int(g) for g in np.unique(groups)))
        bar = fig.colorbar(im, ax=axes[1, col], fraction=0.046, ticks=np.log2(ticks))
        bar.ax.set_yticklabels([str(t) for t in ticks], fontsize=6)
    fig.suptitle(f'SG-Former significance: {osp.basename(image)}', fontsize=9)
    fig.tight_layout()
    out = osp.join(out_dir, osp.splitext(osp.basename(image))[0] + '_significance.png')
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run(images: Sequence[str], inferencer, codebase: str, out_dir: str, significance: bool,
        weights: str, score_thr: float = 0.3, progress: bool = True) -> Dict[str, List[str]]:
    """Draw every image; returns ``{'written': [...], 'failed': [...]}`` (failures are printed
    as one line each and do not stop the run)."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import ProgressBar
    init_default_scope(codebase)
    os.makedirs(out_dir, exist_ok=True)
    written, failed = [], []
    bar = ProgressBar(len(images)) if progress and len(images) > 1 else None
    for image in images:
        try:
            check_image(image)
            written.append(draw_predictions(inferencer, codebase, image, out_dir, score_thr))
            if significance:
                written.append(draw_significance(inferencer, image, out_dir, weights))
        except InputError as exc:
            print(f'\nerror: {exc}', file=sys.stderr)
            failed.append(image)
        except Exception as exc:  # the inferencer failed on this image: name it, go on
            print(f'\nerror: {image}: {type(exc).__name__}: {exc}', file=sys.stderr)
            failed.append(image)
        if bar is not None:
            bar.update()
    return {'written': written, 'failed': failed}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('image', help='an image file or a folder of images')
    p.add_argument('config', help='an mmpretrain, mmdet or mmseg config')
    p.add_argument('--checkpoint', help='runner checkpoint of this config (default: random '
                   'weights)')
    p.add_argument('--out-dir', default='image_demo', help='where the pictures go')
    p.add_argument('--significance', action='store_true',
                   help='also draw the significance maps (SG-Former backbones)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='detection: draw boxes scoring at least this')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not osp.exists(args.image):
        print(f'error: {args.image}: no such image file or folder', file=sys.stderr)
        return 1
    images = list_images(args.image)
    if not images:
        print(f'error: {args.image}: no image files ({", ".join(IMAGE_EXTENSIONS)}) in this '
              'folder', file=sys.stderr)
        return 1
    try:
        cfg, codebase = load_config(args.config)
        inferencer = build_inferencer(cfg, codebase, args.config, args.checkpoint, args.device)
    except InputError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    weights = (f'weights: {osp.basename(args.checkpoint)}' if args.checkpoint
               else 'RANDOM WEIGHTS (no checkpoint)')
    if not args.checkpoint:
        print(f'{args.config}: no --checkpoint, the model has random weights', file=sys.stderr)
    result = run(images, inferencer, codebase, args.out_dir, args.significance, weights,
                 args.score_thr)
    print(f'{len(images) - len(result["failed"])} of {len(images)} image(s) drawn '
          f'({codebase}, {weights}) -> {args.out_dir}')
    return 1 if result['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
