"""Fill the paper-vs-ours table of docs/training.md from the work dirs of mmengine runs.

For every WORK_DIR (a run's work dir, or a folder of them such as ``work_dirs/``) it reads what
mmengine's Runner wrote there:

* the dumped config ``WORK_DIR/<config name>.py``: the config name (matched against the paper
  table in :mod:`mmsgformer.results`) and ``train_cfg.max_iters`` / ``max_epochs``;
* the scalar logs ``WORK_DIR/<timestamp>/vis_data/scalars.json`` of every (resumed) training
  launch: training lines give the iteration/epoch reached, evaluation lines the metrics and the
  iteration/epoch they were computed at; and the ``WORK_DIR/<timestamp>/<timestamp>.json`` that a
  test run (``tools/test.py``) writes;
* ``WORK_DIR/last_checkpoint`` (the latest ``iter_N.pth`` / ``epoch_N.pth``).

A training run's number is taken only from the evaluation at its final iteration/epoch; a test
run's from its test metrics. Runs that are missing, unfinished (killed, or still going) or
finished without a final evaluation are marked in the table, never filled in.

Usage::

    python tools/collect_results.py work_dirs/                       # every run under work_dirs
    python tools/collect_results.py work_dirs/maskrcnn_sgformer_s_1x work_dirs/upernet_...

Prints the markdown table (and a second one for runs of configs without a paper figure). Exit
status 1 when a WORK_DIR could not be read.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmsgformer.results import PAPER_RESULTS, PaperRow  # noqa: E402

#: Keys of the runner's logs that are not evaluation metrics.
NON_METRIC_KEYS = frozenset({'step', 'iter', 'epoch', 'time', 'data_time', 'lr', 'base_lr',
                             'memory', 'eta'})
#: The metrics shown for runs without a paper row (the first four keys when none of these).
MAIN_KEYS = ('accuracy/top1', 'coco/bbox_mAP', 'coco/segm_mAP', 'mIoU', 'aAcc')
_CKPT_RE = re.compile(r'(iter|epoch)_(\d+)\.pth$')
_TS_RE = re.compile(r'^\d{8}_\d{6}$')


@dataclass
class Run:
    """What one work dir says about its run.

    Attributes:
        work_dir: the directory.
        config: config name (the dumped config's file stem).
        kind: ``'train'`` (a training run) or ``'test'`` (a test-only run).
        by_epoch: progress counted in epochs (else iterations).
        total: ``max_epochs`` / ``max_iters`` of the config (None for a test run).
        reached: the last iteration/epoch the logs or checkpoints show (0 if none).
        last_checkpoint: basename of the latest checkpoint, or None.
        final: metrics of the final evaluation (empty if there was none).
        last_eval_step: iteration/epoch of the latest evaluation, or None.
    """

    work_dir: str
    config: str
    kind: str
    by_epoch: bool
    total: Optional[int]
    reached: int = 0
    last_checkpoint: Optional[str] = None
    final: Dict[str, float] = field(default_factory=dict)
    last_eval_step: Optional[int] = None

    @property
    def unit(self) -> str:
        return 'epoch' if self.by_epoch else 'iter'

    @property
    def status(self) -> str:
        """``'finished'``, ``'unfinished'`` or ``'no final evaluation'``."""
        if self.kind == 'test':
            return 'finished' if self.final else 'no final evaluation'
        if self.total is None or self.reached < self.total:
            return 'unfinished'
        return 'finished' if self.final else 'no final evaluation'

    def progress(self) -> str:
        """E.g. ``'iter 2/4'`` (``'test'`` for a test-only run)."""
        if self.kind == 'test':
            return 'test'
        return f'{self.unit} {self.reached}/{self.total if self.total is not None else "?"}'


def _read_json_lines(path: str) -> List[dict]:
    """The dict lines of an mmengine json log (a truncated last line of a killed run is
    skipped)."""
    out = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _metrics_of(rec: dict) -> Dict[str, float]:
    return {k: float(v) for k, v in rec.items()
            if k not in NON_METRIC_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _is_train_line(rec: dict) -> bool:
    return 'loss' in rec or 'lr' in rec


def _find_config(work_dir: str) -> str:
    """The dumped config of a work dir: ``WORK_DIR/*.py`` (the one named like the folder if
    several, else the newest)."""
    found = sorted(glob.glob(osp.join(work_dir, '*.py')))
    if not found:
        raise ValueError(f'{work_dir}: no dumped config (*.py) in it; is it the work dir of an '
                         'mmengine run?')
    named = [p for p in found if osp.splitext(osp.basename(p))[0] == osp.basename(
        osp.normpath(work_dir))]
    return named[0] if named else max(found, key=osp.getmtime)


def _schedule(cfg) -> Tuple[bool, Optional[int]]:
    """(by_epoch, max_epochs or max_iters) of a config's ``train_cfg`` ((False, None) if none)."""
    train_cfg = cfg.get('train_cfg', None) or {}
    if 'max_iters' in train_cfg:
        return False, int(train_cfg['max_iters'])
    if 'max_epochs' in train_cfg:
        return True, int(train_cfg['max_epochs'])
    return False, None


def read_run(work_dir: str) -> Run:
    """Summarize the run in ``work_dir`` (see the module docstring for what is read).

    Raises:
        ValueError: naming the directory, when it is not a run's work dir.
    """
    from mmengine.config import Config
    if not osp.isdir(work_dir):
        raise ValueError(f'{work_dir}: no such directory')
    cfg_path = _find_config(work_dir)
    try:
        cfg = Config.fromfile(cfg_path, import_custom_modules=False)
    except Exception as exc:  # a broken dump: say which file
        raise ValueError(f'{cfg_path}: cannot read the dumped config ({exc})') from exc
    by_epoch, total = _schedule(cfg)
    run = Run(work_dir=work_dir, config=osp.splitext(osp.basename(cfg_path))[0], kind='train',
              by_epoch=by_epoch, total=total)

    launches = sorted(d for d in os.listdir(work_dir)
                      if _TS_RE.match(d) and osp.isdir(osp.join(work_dir, d)))
    key = 'epoch' if by_epoch else 'iter'
    # (position, metrics, index) of every evaluation: its position is the iteration/epoch the
    # run had reached when it ran, i.e. its logged step or, when the step counts something else
    # (an iteration-based run whose LoggerHook logs metrics by epoch writes step 0), the
    # progress of the training lines before it
    evals: List[Tuple[int, Dict[str, float], int]] = []
    test_metrics: Dict[str, float] = {}
    last_train, last_train_index, index = 0, -1, 0
    for ts in launches:  # oldest first: a resumed launch's records come later
        scalars = osp.join(work_dir, ts, 'vis_data', 'scalars.json')
        if osp.isfile(scalars):
            for rec in _read_json_lines(scalars):
                index += 1
                if _is_train_line(rec):
                    last_train = max(last_train, int(rec.get(key, rec.get('step', 0))))
                    last_train_index = index
                else:
                    evals.append((max(int(rec.get('step', 0)), last_train), _metrics_of(rec),
                                  index))
        test_json = osp.join(work_dir, ts, f'{ts}.json')
        if osp.isfile(test_json):  # written by a test run (runner.test())
            for rec in _read_json_lines(test_json):
                test_metrics.update(_metrics_of(rec))

    run.reached = last_train
    ckpt_file = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(ckpt_file):
        with open(ckpt_file, encoding='utf-8') as f:
            run.last_checkpoint = osp.basename(f.read().strip())
        m = _CKPT_RE.search(run.last_checkpoint)
        if m and (m.group(1) == 'epoch') == by_epoch:
            run.reached = max(run.reached, int(m.group(2)))
    if evals:
        run.last_eval_step = max(pos for pos, _, _ in evals)
        if total is not None and run.reached >= total:
            # the final evaluation: at the last iteration/epoch, or after the last training line
            for pos, metrics, i in evals:
                if pos >= total or i > last_train_index:
                    run.final.update(metrics)
    elif test_metrics and last_train_index < 0:
        run.kind, run.final = 'test', test_metrics
    return run


def expand_work_dirs(paths: Sequence[str]) -> List[str]:
    """Run dirs named by ``paths``: a dir with a dumped config is one run, a dir without one
    stands for its sub-dirs that have one. Missing paths are returned as they are (reading them
    then reports the problem)."""
    out: List[str] = []
    for path in paths:
        if osp.isdir(path) and not glob.glob(osp.join(path, '*.py')):
            subs = sorted(d for d in glob.glob(osp.join(path, '*'))
                          if osp.isdir(d) and glob.glob(osp.join(d, '*.py')))
            out.extend(subs if subs else [path])
        else:
            out.append(path)
    return out


def _better(a: Run, b: Run) -> Run:
    """Of two runs of the same config, the one to report: finished first, then the furthest."""
    rank = {'finished': 2, 'no final evaluation': 1, 'unfinished': 0}
    return max((a, b), key=lambda r: (rank[r.status], r.reached))


def _fmt(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.1f}'


def _ours(row: PaperRow, runs: Dict[str, Run]) -> str:
    """The 'ours' cell: measured values joined like the paper's, or why there are none."""
    cells, notes = [], []
    for config in row.configs:
        run = runs.get(config)
        metrics = [m for m in row.metrics if m.config == config]
        if run is None:
            cells += ['-'] * len(metrics)
            notes.append(f'{config}: not run')
        elif run.status != 'finished':
            cells += ['-'] * len(metrics)
            notes.append(f'{config}: {run.status} ({run.progress()})')
        else:
            for m in metrics:
                value = run.final.get(m.key)
                cells.append(_fmt(None if value is None else value * m.scale))
                if value is None:
                    notes.append(f'{config}: no {m.key!r} in the final evaluation')
    if all(c == '-' for c in cells):
        if all(n.endswith(': not run') for n in notes):
            return 'not run'
        return '; '.join(notes)
    return ' / '.join(cells) + (f' ({"; ".join(notes)})' if notes else '')


def paper_table(runs: Sequence[Run], rows: Sequence[PaperRow] = PAPER_RESULTS) -> str:
    """The markdown paper-vs-ours table (docs/training.md §4) for ``runs``."""
    by_config: Dict[str, Run] = {}
    for run in runs:
        by_config[run.config] = (_better(by_config[run.config], run)
                                 if run.config in by_config else run)
    lines = ['| task | model | config | metric | paper (as cited) | ours |',
             '|---|---|---|---|---|---|']
    for row in rows:
        configs = ', '.join(f'`{c}.py`' for c in row.configs)
        labels = ' / '.join(m.label for m in row.metrics)
        paper = ' / '.join(_fmt(m.paper) for m in row.metrics)
        lines.append(f'| {row.task} | {row.model} | {configs} | {labels} | {paper} | '
                     f'{_ours(row, by_config)} |')
    return '\n'.join(lines)


def other_table(runs: Sequence[Run], rows: Sequence[PaperRow] = PAPER_RESULTS) -> str:
    """Runs whose config has no paper figure: progress, status and the final evaluation."""
    known = {c for row in rows for c in row.configs}
    lines = ['| config | work dir | progress | status | final evaluation |',
             '|---|---|---|---|---|']
    for run in runs:
        if run.config in known:
            continue
        keys = [k for k in MAIN_KEYS if k in run.final] or sorted(run.final)[:4]
        final = ', '.join(f'{k}={run.final[k]:.4g}' for k in keys) or '-'
        lines.append(f'| `{run.config}.py` | {run.work_dir} | {run.progress()} | {run.status} | '
                     f'{final} |')
    return '\n'.join(lines) if len(lines) > 2 else ''


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('work_dirs', nargs='+', metavar='WORK_DIR',
                   help="a run's work dir, or a folder of work dirs (e.g. work_dirs/)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    runs, failed = [], 0
    for work_dir in expand_work_dirs(args.work_dirs):
        try:
            runs.append(read_run(work_dir))
        except ValueError as exc:
            print(f'error: {exc}', file=sys.stderr)
            failed += 1
    print(paper_table(runs))
    other = other_table(runs)
    if other:
        print('\nRuns of configs without a paper figure:\n')
        print(other)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
