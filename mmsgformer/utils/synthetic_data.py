"""Write small synthetic COCO-format and ADE20K-format datasets in a few seconds.

The datasets exist so that the configs, the tests and the demo can train and evaluate the real
OpenMMLab pipelines (loading, augmentation, COCO / mIoU metrics) on a machine without the real data.

* COCO instance segmentation (``OUT/coco``, the layout of mmdet's ``data/coco``)::

      annotations/instances_train2017.json  annotations/instances_val2017.json
      train2017/*.jpg                       val2017/*.jpg

  Each image holds 1-4 non-overlapping coloured shapes (circle, rectangle, triangle) on a textured
  background; every shape has a polygon mask, a box and its category.

* ADE20K semantic segmentation (``OUT/ade/ADEChallengeData2016``, the layout of mmseg's
  ``data/ade/ADEChallengeData2016``)::

      images/training/*.jpg       annotations/training/*.png      (uint8 PNG labels)
      images/validation/*.jpg     annotations/validation/*.png

  Labels follow ADE's convention: 0 = "other/unlabelled" (thin outlines around the shapes, ignored
  with ``reduce_zero_label=True``), 1..150 = ADE classes (1-based). Scenes use a "wall" upper part
  and a "floor" lower part with different textures, plus shapes labelled "box" / "ball" /
  "signboard".

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives byte-identical
files.

Used by ``tools/misc/make_synthetic_data.py`` (the command line), ``tools/demo.py`` and the tests::

    python tools/misc/make_synthetic_data.py --out data/synthetic            # both datasets

    from mmsgformer.utils.synthetic_data import make_ade20k, make_coco
    make_coco('data/synthetic/coco', num_train=32, num_val=8, size=192)
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

#: COCO categories of the synthetic instance dataset (id, name).
COCO_CATEGORIES: Tuple[Tuple[int, str], ...] = ((1, 'circle'), (2, 'rectangle'), (3, 'triangle'))

#: ADE20K labels used by the synthetic semantic dataset (1-based ADE ids, as stored in the PNGs).
ADE_OTHER = 0  # "other objects" / unlabelled in ADE; becomes 255 (ignored) with reduce_zero_label
ADE_WALL = 1
ADE_FLOOR = 4
ADE_SHAPE_LABELS: Dict[str, int] = {'rectangle': 42, 'circle': 120, 'triangle': 44}  # box, ball, signboard

SHAPES: Tuple[str, ...] = ('circle', 'rectangle', 'triangle')

Polygon = List[Tuple[float, float]]


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float,
                   aspect: float) -> Polygon:
    """Vertices (x, y) of a shape centred at (cx, cy) inscribed in a circle of radius r."""
    if kind == 'circle':
        n = 28
        return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
                for k in range(n)]
    if kind == 'rectangle':
        # Half-diagonal r; aspect in [0.5, 1] sets the side ratio; rotated by `angle`.
        half_w = r / math.sqrt(1 + aspect ** 2)
        half_h = half_w * aspect
        corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    elif kind == 'triangle':
        corners = [(r * math.cos(a), r * math.sin(a))
                   for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3,
                             -math.pi / 2 + 4 * math.pi / 3)]
    else:
        raise ValueError(f'kind={kind!r} must be one of {SHAPES}')
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in corners]


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A (h, w, 3) uint8 texture: a muted base colour, oriented stripes and smooth noise."""
    base = rng.uniform(70, 170, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    freq = rng.uniform(0.04, 0.2)
    stripes = np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
    coarse = rng.normal(0, 1, size=(max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
    smooth = np.stack([
        np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BILINEAR))
        for c in range(3)
    ], axis=-1)
    img = base + rng.uniform(8, 22) * stripes[..., None] + 12 * smooth
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _object_colour(rng: np.random.Generator, background_mean: np.ndarray) -> Tuple[int, int, int]:
    """A saturated colour at least 120 (L1) away from the background mean."""
    for _ in range(100):
        colour = rng.integers(0, 256, size=3)
        if colour.max() - colour.min() > 90 and np.abs(colour - background_mean).sum() > 120:
            return tuple(int(c) for c in colour)
    return tuple(int(c) for c in (255 - background_mean).astype(int))


def _place_shapes(rng: np.random.Generator, size: int, max_objects: int,
                  min_radius: float, max_radius: float) -> List[Tuple[str, float, float, float]]:
    """Up to ``max_objects`` non-overlapping (kind, cx, cy, r) fully inside the image."""
    want = int(rng.integers(1, max_objects + 1))
    placed: List[Tuple[str, float, float, float]] = []
    for _ in range(60):
        if len(placed) == want:
            break
        r = float(rng.uniform(min_radius, max_radius))
        cx = float(rng.uniform(r + 2, size - r - 2))
        cy = float(rng.uniform(r + 2, size - r - 2))
        if all(math.hypot(cx - px, cy - py) > r + pr + 4 for _, px, py, pr in placed):
            placed.append((SHAPES[int(rng.integers(len(SHAPES)))], cx, cy, r))
    return placed


def _draw_scene(rng: np.random.Generator, size: int, max_objects: int,
                split_background: bool) -> Tuple[np.ndarray, List[Tuple[str, Polygon]], int]:
    """Render a scene; returns the RGB image, the shapes (kind, polygon) and the horizon row."""
    horizon = size
    if split_background:
        horizon = int(rng.integers(size // 3, 2 * size // 3))
        img = np.concatenate([_texture(rng, horizon, size), _texture(rng, size - horizon, size)],
                             axis=0)
    else:
        img = _texture(rng, size, size)
    shapes = []
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    bg_mean = img.reshape(-1, 3).mean(0)
    for kind, cx, cy, r in _place_shapes(rng, size, max_objects, size * 0.09, size * 0.2):
        poly = _shape_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)),
                              float(rng.uniform(0.5, 1.0)))
        draw.polygon(poly, fill=_object_colour(rng, bg_mean))
        shapes.append((kind, poly))
    img = np.asarray(pil).astype(np.int16)
    img = np.clip(img + rng.normal(0, 3, size=img.shape), 0, 255).astype(np.uint8)
    return img, shapes, horizon


def _polygon_mask(poly: Polygon, size: int) -> np.ndarray:
    mask = Image.new('L', (size, size), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=1)
    return np.asarray(mask, dtype=bool)


def make_coco(root: str, num_train: int = 48, num_val: int = 16, size: int = 256,
              seed: int = 0, max_objects: int = 4) -> Dict[str, int]:
    """Write the synthetic COCO-format instance dataset under ``root``.

    Args:
        root: output folder (gets ``annotations/``, ``train2017/``, ``val2017/``).
        num_train, num_val: number of images per split (>= 1).
        size: square image side in pixels (>= 64).
        seed: seed of the generator; the same seed writes identical files.
        max_objects: at most this many shapes per image (>= 1).

    Returns:
        ``{'train_images', 'val_images', 'train_instances', 'val_instances'}`` counts.
    """
    _check_sizes(num_train, num_val, size)
    if max_objects < 1:
        raise ValueError(f'max_objects={max_objects} must be >= 1')
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    stats: Dict[str, int] = {}
    image_id = 0
    ann_id = 0
    cat_ids = {name: cid for cid, name in COCO_CATEGORIES}
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            file_name = f'{image_id:012d}.jpg'
            img, shapes, _ = _draw_scene(rng, size, max_objects, split_background=False)
            Image.fromarray(img).save(osp.join(root, split, file_name), quality=95)
            images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
            for kind, poly in shapes:
                ann_id += 1
                xs = [p[0] for p in poly]
                ys = [p[1] for p in poly]
                x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
                x1, y1 = min(max(xs), float(size)), min(max(ys), float(size))
                annotations.append(dict(
                    id=ann_id, image_id=image_id, category_id=cat_ids[kind], iscrowd=0,
                    bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    area=float(_polygon_mask(poly, size).sum()),
                    segmentation=[[round(v, 2) for p in poly for v in p]]))
        ann = dict(
            info=dict(description='mmsgformer synthetic shapes', version='1.0', year=2017),
            licenses=[], images=images, annotations=annotations,
            categories=[dict(id=cid, name=name, supercategory='shape')
                        for cid, name in COCO_CATEGORIES])
        short = split[:-4]  # train / val
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(ann, f)
        stats[f'{short}_images'] = len(images)
        stats[f'{short}_instances'] = len(annotations)
    return stats


def make_ade20k(root: str, num_train: int = 48, num_val: int = 16, size: int = 256,
                seed: int = 0, max_objects: int = 4) -> Dict[str, int]:
    """Write the synthetic ADE20K-format semantic dataset under ``root``.

    ``root`` plays the role of ``ADEChallengeData2016``: it gets ``images/{training,validation}``
    (RGB ``.jpg``) and ``annotations/{training,validation}`` (``.png``, uint8, values in
    ``{0, 1, 4, 42, 44, 120}``: ADE ids, 0 = unlabelled).

    Returns:
        ``{'train_images', 'val_images', 'labels'}`` where ``labels`` is the number of distinct
        label values written (including 0).
    """
    _check_sizes(num_train, num_val, size)
    rng = np.random.default_rng(seed + 1_000_003)
    seen = set()
    stats: Dict[str, int] = {}
    for split, count in (('training', num_train), ('validation', num_val)):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for k in range(count):
            name = f'ADE_{"train" if split == "training" else "val"}_{k + 1:08d}'
            img, shapes, horizon = _draw_scene(rng, size, max_objects, split_background=True)
            label = np.full((size, size), ADE_WALL, dtype=np.uint8)
            label[horizon:] = ADE_FLOOR
            for kind, poly in shapes:
                outline = Image.new('L', (size, size), 0)
                ImageDraw.Draw(outline).polygon(poly, fill=1, outline=2, width=2)
                outline = np.asarray(outline)
                label[outline == 1] = ADE_SHAPE_LABELS[kind]
                label[outline == 2] = ADE_OTHER
            seen.update(np.unique(label).tolist())
            Image.fromarray(img).save(osp.join(root, 'images', split, name + '.jpg'), quality=95)
            Image.fromarray(label).save(osp.join(root, 'annotations', split, name + '.png'))
        stats['train_images' if split == 'training' else 'val_images'] = count
    stats['labels'] = len(seen)
    return stats


def _check_sizes(num_train: int, num_val: int, size: int) -> None:
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train={num_train}, num_val={num_val}: both splits need >= 1 image')
    if size < 64:
        raise ValueError(f'size={size} must be >= 64 pixels (shapes need room)')
