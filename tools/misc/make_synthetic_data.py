"""Write small synthetic COCO-format and ADE20K-format datasets in a few seconds.

The datasets (layouts, labels, seeding) are described in :mod:`mmsgformer.utils.synthetic_data`,
which the demo (``tools/demo.py``) and the tests import as well.

Usage::

    python tools/misc/make_synthetic_data.py --out data/synthetic            # both datasets
    python tools/misc/make_synthetic_data.py --out data/synthetic --only coco --num-train 32 \
        --size 192
"""
import argparse
import os.path as osp
import time
from typing import Optional, Sequence

from mmsgformer.utils.synthetic_data import make_ade20k, make_coco


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/synthetic',
                        help='output root; gets coco/ and ade/ADEChallengeData2016/')
    parser.add_argument('--only', choices=['coco', 'ade20k'], default=None,
                        help='write one dataset only')
    parser.add_argument('--num-train', type=int, default=48)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--size', type=int, default=256, help='square image side')
    parser.add_argument('--max-objects', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    if args.only in (None, 'coco'):
        root = osp.join(args.out, 'coco')
        stats = make_coco(root, args.num_train, args.num_val, args.size, args.seed,
                          args.max_objects)
        print(f'COCO-format shapes   -> {root}: {stats}')
    if args.only in (None, 'ade20k'):
        root = osp.join(args.out, 'ade', 'ADEChallengeData2016')
        stats = make_ade20k(root, args.num_train, args.num_val, args.size, args.seed,
                            args.max_objects)
        print(f'ADE20K-format scenes -> {root}: {stats}')
    print(f'done in {time.time() - t0:.1f} s')


if __name__ == '__main__':
    main()
