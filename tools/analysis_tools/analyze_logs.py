"""Plot loss and metric curves from mmengine JSON logs.

mmengine writes one JSON object per line to ``<work_dir>/<timestamp>/vis_data/scalars.json``
(and ``vis_data/<timestamp>.json``). Training lines carry ``lr`` and the losses; validation lines
carry the metrics (``coco/bbox_mAP``, ``mIoU``, ``accuracy/top1``, ...). ``step`` is the global
iteration for training lines and the epoch (epoch-based) or iteration (iter-based) for
validation lines.

Usage::

    python tools/analysis_tools/analyze_logs.py work_dirs/maskrcnn_sgformer_s_1x  # finds vis_data
    python tools/analysis_tools/analyze_logs.py a/vis_data/scalars.json b/vis_data/scalars.json \
        --legend run-a run-b --keys loss coco/bbox_mAP --out curves.png
    python tools/analysis_tools/analyze_logs.py LOG --list-keys

Without ``--keys`` every loss and every validation metric found is plotted, one panel each.
"""
import argparse
import glob
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

NON_METRIC_KEYS = {'step', 'epoch', 'iter', 'data_time', 'time', 'memory', 'lr',
                   'base_lr', 'momentum', 'eta'}

Series = Dict[str, Tuple[List[float], List[float]]]


def find_log(path: str) -> str:
    """A JSON log file itself, or the newest ``vis_data/scalars.json`` under a directory."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise ValueError(f'log path {path!r} is neither a file nor a directory')
    found = sorted(glob.glob(os.path.join(path, '**', 'vis_data', 'scalars.json'),
                             recursive=True), key=os.path.getmtime)
    if not found:
        found = sorted(glob.glob(os.path.join(path, '**', 'vis_data', '*.json'),
                                 recursive=True), key=os.path.getmtime)
    if not found:
        raise ValueError(f'no vis_data/*.json under {path!r}: pass the JSON log file itself')
    return found[-1]


def load_log(path: str) -> Tuple[Series, Series]:
    """Parse an mmengine JSON log into ``(train, val)`` series ``{key: (steps, values)}``.

    A line with ``lr`` or any ``loss*`` key is a training line; any other line with numeric
    keys besides timing/step fields is a validation line. Non-numeric values are skipped.
    """
    train: Series = {}
    val: Series = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{lineno} is not a JSON line ({e})') from None
            if not isinstance(rec, dict) or 'step' not in rec:
                continue
            is_train = 'lr' in rec or any(k.startswith('loss') for k in rec)
            target = train if is_train else val
            for key, value in rec.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if key in ('step', 'epoch', 'iter'):
                    continue
                if not is_train and key in NON_METRIC_KEYS:
                    continue
                xs, ys = target.setdefault(key, ([], []))
                xs.append(float(rec['step']))
                ys.append(float(value))
    return train, val


def default_keys(train: Series, val: Series) -> List[str]:
    """All loss keys (``loss`` first), then all validation metrics."""
    losses = sorted((k for k in train if k.startswith('loss')), key=lambda k: (k != 'loss', k))
    return losses + sorted(val)


def plot_curves(logs: Sequence[Tuple[str, Series, Series]], keys: Sequence[str], out: str,
                title: Optional[str] = None, dpi: int = 100) -> str:
    """One panel per key, one line per log; saves a PNG at ``out`` and returns the path."""
    if not keys:
        raise ValueError('no keys to plot (no loss or metric found in the logs)')
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        plotted = False
        for name, train, val in logs:
            series = train.get(key) or val.get(key)
            if not series:
                continue
            is_val = key not in train
            ax.plot(series[0], series[1], marker='o' if is_val else None,
                    markersize=4, linewidth=1.2, label=name)
            plotted = True
        ax.set_title(key)
        ax.set_xlabel('step (val: epoch or iter)' if key not in logs[0][1] else 'iter')
        ax.grid(alpha=0.3)
        if plotted and len(logs) > 1:
            ax.legend(fontsize=8)
        if not plotted:
            ax.text(0.5, 0.5, f'{key}: not in any log', ha='center', va='center',
                    transform=ax.transAxes)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('logs', nargs='+', help='JSON log files (vis_data/scalars.json) or work dirs')
    p.add_argument('--keys', nargs='+', help='keys to plot (default: all losses and metrics)')
    p.add_argument('--legend', nargs='+', help='one name per log (default: the paths)')
    p.add_argument('--out', default='curves.png', help='output PNG (default: curves.png)')
    p.add_argument('--title', help='figure title')
    p.add_argument('--list-keys', action='store_true', help='print the keys found and exit')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.legend and len(args.legend) != len(args.logs):
        raise SystemExit(f'--legend has {len(args.legend)} names for {len(args.logs)} logs')
    logs = []
    for i, path in enumerate(args.logs):
        log_file = find_log(path)
        train, val = load_log(log_file)
        logs.append((args.legend[i] if args.legend else path, train, val))
        if args.list_keys:
            print(f'{log_file}:\n  train: {", ".join(sorted(train))}\n'
                  f'  val:   {", ".join(sorted(val))}')
    if args.list_keys:
        return 0
    keys = args.keys or default_keys(logs[0][1], logs[0][2])
    out = plot_curves(logs, keys, args.out, args.title)
    print(f'wrote {out} ({len(keys)} panels: {", ".join(keys)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
