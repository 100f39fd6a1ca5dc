"""Draw SG-Former's significance maps and token reallocation for one image (cf. the paper's Fig. 2).

For every hybrid-scale block it writes ``significance_s{stage}_b{block}.png``: the block's
significance map (min-max scaled, at its stage's token resolution, nearest-upsampled) over the
image. For every self-guided block it writes ``reallocation_s{stage}_b{block}.png``: each image
region coloured by how finely the block represents its tokens, i.e. the group size ``g`` of the
segment its significance rank falls in (``1/g`` resolution; red = finest, blue = coarsest).
``summary.png`` puts all panels in one figure. Every picture says whether the weights are random.
Stages and blocks are numbered from 0, as ``out_indices`` and
``mmsgformer.models.SignificanceRecord`` do: ``s0_b0`` is the first (hybrid-scale) block of the
first stage, ``s0_b1`` the self-guided block after it.

Per-block PNGs are exactly ``W x (H + 40)`` pixels for a ``--size H W`` input (the image plus a
caption strip).

Usage::

    python tools/analysis_tools/visualize_significance.py IMAGE --out-dir vis  # random S weights
    python tools/analysis_tools/visualize_significance.py IMAGE --arch b --out-dir vis
    python tools/analysis_tools/visualize_significance.py IMAGE \
        --config configs/sgformer_s_in1k.py --checkpoint SG-Former-S.pth --out-dir vis
"""
import argparse
import copy
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from mmsgformer.analysis.significance_maps import (reallocation_map,  # noqa: E402
                                                   resize_nearest)
from mmsgformer.ops import group_sizes_for  # noqa: E402

MEAN = (123.675, 116.28, 103.53)  # ImageNet RGB, what the official checkpoints were trained with
STD = (58.395, 57.12, 57.375)
CAPTION_H = 40
SIG_CMAP = 'inferno'
# colours from coarsest to finest segment (2- and 3-segment rules)
SEGMENT_COLOURS = {2: ((31, 119, 180), (214, 39, 40)),
                   3: ((31, 119, 180), (255, 190, 40), (214, 39, 40))}


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def build_backbone(config: Optional[str], checkpoint: Optional[str], arch: str,
                   sga_impl: str) -> Tuple[torch.nn.Module, str]:
    """The SGFormer backbone (from ``config``'s ``model.backbone`` or ``arch``), eval mode.

    Returns ``(backbone, weights description)``; without a checkpoint the official random
    initialisation is used.
    """
    from mmsgformer.models import SGFormer
    if config:
        from mmsgformer.utils import load_config
        cfg, _ = load_config(config)
        bb = copy.deepcopy(cfg.model.get('backbone'))
        if bb is None:
            raise ValueError(f'config {config!r} has no model.backbone')
        kind = str(bb.pop('type', ''))
        if kind.split('.')[-1] != 'SGFormer':
            raise ValueError(f'config {config!r}: model.backbone.type={kind!r}; the significance '
                             'maps exist only for SGFormer backbones')
        bb.pop('init_cfg', None)
        bb['sga_impl'] = sga_impl
        backbone = SGFormer(**bb)
    else:
        if arch.lstrip().startswith('{'):
            arch = json.loads(arch)
        backbone = SGFormer(arch=arch, sga_impl=sga_impl)
    if checkpoint:
        report = backbone.load_pretrained(checkpoint)
        print(f"{checkpoint}: {len(report['loaded'])} tensors loaded, "
              f"{len(report['missing'])} missing: {report['missing'][:8]}")
        weights = f'weights: {os.path.basename(checkpoint)}'
    else:
        backbone.init_weights()
        weights = 'RANDOM WEIGHTS (official init)'
    return backbone.eval(), weights


def load_image(path: str, size: Tuple[int, int]) -> Tuple[np.ndarray, torch.Tensor]:
    """RGB ``(H, W, 3)`` uint8 resized to ``size`` and the normalized ``(1, 3, H, W)`` input."""
    img = Image.open(path).convert('RGB').resize((size[1], size[0]), Image.BICUBIC)
    rgb = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    return rgb, x.unsqueeze(0)


def _to_image_grid(grid: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """``(h, w)`` stage map -> ``(H, W)`` array covering the image (nearest)."""
    return resize_nearest(grid[None], size)[0].numpy()


def _caption(panel: np.ndarray, lines: Sequence[str],
             legend: Sequence[Tuple[Tuple[int, int, int], str]] = ()) -> Image.Image:
    H, W = panel.shape[:2]
    canvas = Image.new('RGB', (W, H + CAPTION_H), (255, 255, 255))
    canvas.paste(Image.fromarray(panel), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for i, line in enumerate(lines[:2]):
        draw.text((3, H + 2 + 12 * i), line, fill=(0, 0, 0), font=font)
    x = 3
    for colour, label in legend:
        draw.rectangle((x, H + 28, x + 9, H + 37), fill=colour, outline=(0, 0, 0))
        draw.text((x + 12, H + 26), label, fill=(0, 0, 0), font=font)
        x += 16 + 7 * len(label)
    return canvas


def significance_panel(rgb: np.ndarray, sig: torch.Tensor, alpha: float) -> np.ndarray:
    """Image blended with the min-max scaled ``(h, w)`` map (colormap :data:`SIG_CMAP`)."""
    m = _to_image_grid(sig.double(), rgb.shape[:2])
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    heat = plt.get_cmap(SIG_CMAP)(m)[..., :3] * 255.0
    return (alpha * heat + (1 - alpha) * rgb).clip(0, 255).astype(np.uint8)


def reallocation_panel(rgb: np.ndarray, gmap: torch.Tensor, sr_ratio: int,
                       alpha: float) -> Tuple[np.ndarray, List[Tuple[tuple, str]]]:
    """Image blended with one colour per segment of the ``(h, w)`` group-size map."""
    sizes = group_sizes_for(sr_ratio)  # coarsest first
    colours = SEGMENT_COLOURS[len(sizes)]
    g = _to_image_grid(gmap, rgb.shape[:2])
    layer = np.zeros_like(rgb, dtype=np.float64)
    for size, colour in zip(sizes, colours):
        layer[g == size] = colour
    blend = (alpha * layer + (1 - alpha) * rgb).clip(0, 255).astype(np.uint8)
    return blend, [(c, f'1/{s}') for s, c in zip(sizes, colours)]


def visualize(backbone: torch.nn.Module, rgb: np.ndarray, x: torch.Tensor, out_dir: str,
              weights: str, alpha: float = 0.55) -> Dict[str, List[str]]:
    """Run the backbone and write all PNGs; returns ``{'significance': [...], ...}`` paths."""
    os.makedirs(out_dir, exist_ok=True)
    with torch.no_grad():
        _, records = backbone(x, return_significance=True)
    if not records:
        raise ValueError('the backbone returned no significance records '
                         '(no hybrid-scale block in stages 0-2)')
    written: Dict[str, List[str]] = {'significance': [], 'reallocation': [], 'summary': []}
    panels = []
    for rec in records:
        sig = rec.significance[0]
        h, w = sig.shape
        sp = significance_panel(rgb, sig, alpha)
        title = f'stage {rec.stage} block {rec.block} HSA: significance {h}x{w}'
        path = os.path.join(out_dir, f'significance_s{rec.stage}_b{rec.block}.png')
        _caption(sp, [title, weights]).save(path)
        written['significance'].append(path)

        gmap = reallocation_map(rec.significance[:1], rec.sr_ratio)[0]
        rp, legend = reallocation_panel(rgb, gmap, rec.sr_ratio, alpha)
        title = f'stage {rec.stage} block {rec.block + 1} SGA: tokens at 1/g'
        path = os.path.join(out_dir, f'reallocation_s{rec.stage}_b{rec.block + 1}.png')
        _caption(rp, [title, weights], legend).save(path)
        written['reallocation'].append(path)
        panels.append((rec, sp, rp, legend))

    # summary: the input, then one (significance over reallocation) pair per HSA/SGA pair
    ncols = min(6, len(panels) + 1)
    nrows = math.ceil((len(panels) + 1) / ncols)
    aspect = rgb.shape[0] / rgb.shape[1]
    fig, axes = plt.subplots(2 * nrows, ncols, squeeze=False,
                             figsize=(2.4 * ncols, 2 * nrows * (2.4 * aspect + 0.35) + 0.5))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis('off')
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title('input', fontsize=8)
    axes[1, 0].text(0.5, 0.5, weights.replace(' (', '\n('), fontsize=8, ha='center',
                    va='center', color='red' if 'RANDOM' in weights else 'black',
                    transform=axes[1, 0].transAxes)
    for idx, (rec, sp, rp, legend) in enumerate(panels, start=1):
        top, bottom = axes[2 * (idx // ncols), idx % ncols], axes[2 * (idx // ncols) + 1,
                                                                  idx % ncols]
        top.imshow(sp)
        top.set_title(f'stage {rec.stage} block {rec.block}: significance', fontsize=7)
        bottom.imshow(rp)
        bottom.set_title(f'stage {rec.stage} block {rec.block + 1}: tokens at 1/g', fontsize=7)
        bottom.legend(handles=[Patch(color=np.array(c) / 255, label=l) for c, l in legend],
                      fontsize=5, loc='lower right', framealpha=0.8, handlelength=1)
    fig.suptitle('SG-Former: significance maps and token reallocation'
                 + (' (RANDOM WEIGHTS)' if 'RANDOM' in weights else ''), fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, 'summary.png')
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written['summary'].append(path)
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('image', help='input image (any format PIL reads)')
    p.add_argument('--config', help='config whose model.backbone is an SGFormer')
    p.add_argument('--checkpoint', help='official, converted or runner checkpoint')
    p.add_argument('--arch', default='s',
                   help="SGFormer arch without --config: s/m/b (default s) or a JSON dict "
                        "with embed_dims, num_heads, depths")
    p.add_argument('--size', type=int, nargs='+', default=[224],
                   help='input size H [W] the image is resized to (default 224)')
    p.add_argument('--out-dir', default='significance_vis')
    p.add_argument('--alpha', type=float, default=0.55, help='overlay opacity in [0, 1]')
    p.add_argument('--sga-impl', default='auto', choices=('auto', 'op', 'reference'))
    p.add_argument('--seed', type=int, default=0, help='seed of the random weights')
    args = p.parse_args(argv)
    if len(args.size) not in (1, 2) or min(args.size) < 32:
        p.error(f'--size {args.size}: give H or H W, each >= 32')
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f'--alpha={args.alpha} must be in [0, 1]')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    size = (args.size[0], args.size[-1])
    backbone, weights = build_backbone(args.config, args.checkpoint, args.arch, args.sga_impl)
    rgb, x = load_image(args.image, size)
    written = visualize(backbone, rgb, x, args.out_dir, weights, args.alpha)
    for kind, paths in written.items():
        print(f'{kind}: {len(paths)} PNG(s): {", ".join(os.path.basename(p) for p in paths)}')
    print(f'written to {args.out_dir} ({weights})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
