"""CPU speed and memory benchmark: SG-Former vs Swin (mmpretrain / mmdet) vs Focal Transformer.

Prints ONE table with inference and training rows. Every cell (mode, model, input) is measured in
a fresh subprocess, so the peak RSS belongs to that model alone; each subprocess uses
``torch.set_num_threads(THREADS)``.

Modes (``--modes``):

* ``infer``: eval mode, ``torch.no_grad()``, ``--warmup`` untimed forwards (default 3), then the
  median of ``--repeats`` timed forwards (default 5).
* ``train``: train mode, drop path 0, one step = forward, ``loss = sum over the outputs of
  mean(out ** 2)``, ``loss.backward()`` (``--zero-grad``: ``model.zero_grad(set_to_none=True)``
  before every step; otherwise the gradients accumulate in place); default 1 warm-up step and
  the best of 2 timed steps.

Inputs (``--sizes``):

* ``224``: classifier (backbone + global average pool + Linear(C, 1000)), batch 8.
* ``800x1344`` and ``512x512``: backbone only (all four stage outputs, as in Mask R-CNN and
  UperNet); ``swin-*`` is mmdet's ``SwinTransformer`` as in mmdet's Swin Mask R-CNN config
  (mmpretrain's at 224). Batch: inference 1 (800x1344) / 4 (512x512), training 2 / 4.
* any other ``N`` (classifier at NxN, batch 8) or ``HxW`` (dense backbone, batch 1 / 2), e.g.
  ``64x64`` for a smoke run of the tiny archs.

``--rounds R``: every cell is measured R times (each time in a fresh process), the cell order
reversed every other round, so that a model and its reference run close in time in every round
and the VM's drift over the run cancels; the table gives medians over rounds, each ratio the
median of the per-round ratios, and a ``rounds`` column with the lowest and highest per-round
time ratio.

Columns: ``s/step`` (one forward, or one fwd+bwd step, of the whole batch); ``time vs Swin-T``
(seconds per image over Swin-T's in the same mode and input, > 1 = slower); ``GMac``: multiply-adds
of one step, counted by :mod:`mmsgformer.analysis.flops` on the cell's model and input (one
traced eval-mode forward after the timing; a train step counts as 3x the forward's: forward,
plus backward to the inputs and to the weights);
``GMac/s = GMac / s/step``. Memory: ``peak MiB`` is the process's peak RSS (``VmHWM``) during the
warm-up and timed steps; the high-water mark is reset right after the model and input are built,
and ``growth MiB`` is that peak minus the RSS at that moment (model weights and the
Python/torch/mm* import baseline excluded; gradients and everything the steps allocate
included). ``cpu`` is the process CPU time over wall time divided by the thread count during the
timed steps; a row under 90% is flagged ``!`` (the machine was busy: its times are unreliable).
``sys``: the share of that CPU time spent in the kernel, mostly supplying fresh zeroed pages: with
glibc's default ``malloc`` every block over 32 MiB is mapped on allocation and unmapped on free,
so each step faults its large activations in again. ``--malloc retain`` runs the rows with
``MALLOC_MMAP_MAX_=0`` and a high ``MALLOC_TRIM_THRESHOLD_``: freed memory stays in the process
and later steps reuse it, as a GPU's caching allocator does.
``GEMM share``: the row's GMac/s over the rate of one large float32 GEMM (``torch.mm`` of two
2048x2048 matrices, same thread count) measured in its own fresh process in the same run, the
machine's practical multiply-add rate: a model near 100% cannot get faster without doing fewer
multiply-adds.

Usage::

    python tools/analysis_tools/benchmark.py               # full table (about 40 minutes)
    python tools/analysis_tools/benchmark.py --modes train --sizes 512x512 \
        --models sgformer-s swin-t
    python tools/analysis_tools/benchmark.py --modes train --sizes 800x1344 \
        --models sgformer-s swin-t --with-cp                # with_cp=True rows beside the plain
    python tools/analysis_tools/benchmark.py --models sgformer-s swin-t --sizes 224 --repeats 3
    python tools/analysis_tools/benchmark.py --modes infer train --sizes 800x1344 512x512 \
        --models sgformer-s swin-t --rounds 3               # the training-cost targets
    python tools/analysis_tools/benchmark.py --models sgformer-tiny --sizes 64x64 --batch 1 \
        --repeats 1 --warmup 0                              # smoke run
    python tools/analysis_tools/benchmark.py --profile sgformer-s --modes train \
        --sizes 800x1344 --batch 1                          # top ops of a fwd+bwd step
    python tools/analysis_tools/benchmark.py --breakdown sgformer-s --sizes 800x1344 \
        --threads 1                                         # inference time and GMac/s per part
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

THREADS = 2
RESULT_TAG = 'BENCHMARK_RESULT '
REFERENCE = 'swin-t'
CPU_FLAG = 0.9  # rows whose cpu share is below this are flagged
TRAIN_MAC_FACTOR = 3  # multiply-adds of forward + backward, in forwards
GEMM_SIZE = 2048  # the reference GEMM: (GEMM_SIZE x GEMM_SIZE) @ (GEMM_SIZE x GEMM_SIZE)
# --malloc: the environment of the worker processes (glibc malloc tunables)
MALLOC_ENV = {'system': {},
              'retain': {'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': str(1 << 40)}}

# name -> (family, arch) ; built by _build_backbone
MODELS: Dict[str, Tuple[str, str]] = {
    'sgformer-s': ('sgformer', 's'),
    'sgformer-m': ('sgformer', 'm'),
    'sgformer-b': ('sgformer', 'b'),
    # the plain computation (fast_path=False): what the fast paths are measured against
    'sgformer-s-plain': ('sgformer', 's-plain'),
    'swin-t': ('swin', 'tiny'),
    'swin-s': ('swin', 'small'),
    'swin-b': ('swin', 'base'),
    'focal-t': ('focal', 't'),
    'focal-s': ('focal', 's'),
    'focal-b': ('focal', 'b'),
    # tiny archs for smoke tests (not part of the default table)
    'sgformer-tiny': ('sgformer', 'tiny'),
    'swin-tiny-test': ('swin', 'tiny-test'),
    'focal-tiny-test': ('focal', 'tiny-test'),
}
MODES = ('infer', 'train')
SIZES: Dict[str, Tuple[int, int]] = {'224': (224, 224), '800x1344': (800, 1344),
                                     '512x512': (512, 512)}  # the table's inputs
DEFAULT_SIZES = {'infer': ['224', '800x1344'], 'train': ['800x1344', '512x512']}
DEFAULT_BATCH = {('infer', '224'): 8, ('infer', '800x1344'): 1, ('infer', '512x512'): 4,
                 ('train', '224'): 8, ('train', '800x1344'): 2, ('train', '512x512'): 4}
# (warm-up, repeats, statistic) of each mode
DEFAULT_TIMING = {'infer': (3, 5, 'median'), 'train': (1, 2, 'best')}
DEFAULT_224 = ['sgformer-s', 'sgformer-m', 'sgformer-b', 'swin-t', 'swin-s', 'swin-b',
               'focal-t', 'focal-s', 'focal-b']
DEFAULT_DET = ['sgformer-s', 'swin-t', 'focal-t']
DEFAULT_TRAIN = ['sgformer-s', 'sgformer-m', 'sgformer-b', 'swin-t', 'swin-s', 'swin-b',
                 'focal-t']

# a 2-stage-pair SG-Former small enough for smoke tests (even depths in stages 1-3)
SGFORMER_TINY = dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 4, 4], depths=[2, 2, 2, 1])
SWIN_TINY_TEST = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
FOCAL_TINY_TEST = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
# mmdet's Swin (configs/swin/mask-rcnn_swin-*-p4-w7_fpn_*.py): embed_dims, depths, num_heads
MMDET_SWIN = {'tiny': (96, [2, 2, 6, 2], [3, 6, 12, 24]),
              'small': (96, [2, 2, 18, 2], [3, 6, 12, 24]),
              'base': (128, [2, 2, 18, 2], [4, 8, 16, 32]),
              'tiny-test': (16, [1, 1, 1, 1], [1, 1, 2, 2])}


def parse_size(token: str) -> Tuple[Tuple[int, int], bool]:
    """``'N'`` -> classifier at NxN, ``'HxW'`` -> dense backbone at HxW; ``((H, W), dense)``."""
    parts = token.split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) >= 32 for p in parts):
        raise ValueError(f'size {token!r} must be N (classifier, NxN) or HxW (dense backbone), '
                         f'each >= 32')
    return (int(parts[0]), int(parts[-1])), len(parts) == 2


def default_batch(mode: str, token: str) -> int:
    """Batch of a cell: :data:`DEFAULT_BATCH`, else classifier 8, dense infer 1 / train 2."""
    if (mode, token) in DEFAULT_BATCH:
        return DEFAULT_BATCH[(mode, token)]
    if not parse_size(token)[1]:
        return 8
    return 1 if mode == 'infer' else 2


def _build_backbone(family: str, arch: str, dense: bool, img_hw: Tuple[int, int],
                    with_cp: bool = False):
    """The backbone, drop path 0; ``dense`` = all four outputs (detection), else the last only."""
    out_indices = (0, 1, 2, 3) if dense else (3, )
    if family == 'sgformer':
        from mmsgformer import SGFormer
        a = dict(SGFORMER_TINY) if arch == 'tiny' else arch.replace('-plain', '')
        # fast_path is passed only to turn it off, so an older checkout on PYTHONPATH
        # (before fast_path existed) can be measured in the same session
        plain = dict(fast_path=False) if arch.endswith('-plain') else {}
        return SGFormer(arch=a, out_indices=out_indices, pretrain_img_size=224,
                        mlp_ratio=2 if arch == 'tiny' else 4, drop_path_rate=0.,
                        with_cp=with_cp, **plain)
    if family == 'focal':
        from mmsgformer import FocalTransformer
        a = dict(FOCAL_TINY_TEST) if arch == 'tiny-test' else arch
        # dense inputs: the border handling the detection/segmentation configs use
        return FocalTransformer(arch=a, out_indices=out_indices, drop_path_rate=0.,
                                border_mode='masked' if dense else 'official', with_cp=with_cp)
    if family == 'swin':
        if dense:
            from mmdet.models.backbones import SwinTransformer
            dims, depths, heads = MMDET_SWIN[arch]
            return SwinTransformer(embed_dims=dims, depths=depths, num_heads=heads,
                                   window_size=7, mlp_ratio=4, qkv_bias=True,
                                   drop_path_rate=0., patch_norm=True, with_cp=with_cp,
                                   out_indices=out_indices, convert_weights=False)
        from mmpretrain.models import SwinTransformer
        a = dict(SWIN_TINY_TEST) if arch == 'tiny-test' else arch
        return SwinTransformer(arch=a, img_size=img_hw, out_indices=out_indices,
                               drop_path_rate=0., with_cp=with_cp)
    raise ValueError(f'unknown model family {family!r}')


def build_model(name: str, dense: bool, img_hw: Tuple[int, int], with_cp: bool = False):
    """``dense=False``: backbone + GAP + Linear(C, 1000) -> (B, 1000) logits; ``dense=True``:
    backbone only -> four (B, C_i, H/2^(i+2), W/2^(i+2)) maps. In eval mode."""
    import torch
    import torch.nn as nn
    if name not in MODELS:
        raise ValueError(f'model {name!r} is not one of {sorted(MODELS)}')
    backbone = _build_backbone(*MODELS[name], dense=dense, img_hw=img_hw, with_cp=with_cp)
    backbone.eval()  # not chained: mmdet's SwinTransformer.train() returns None
    if dense:
        return backbone

    class Classifier(nn.Module):
        """backbone -> last stage (B, C, H, W) -> mean over H, W -> Linear(C, 1000)."""

        def __init__(self, backbone: nn.Module, channels: int) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(channels, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x)[-1].mean((2, 3)))

    with torch.no_grad():  # the last stage's width, from a 1-image forward at a small size
        channels = backbone(torch.zeros(1, 3, 224, 224))[-1].shape[1]
    return Classifier(backbone, channels).eval()


def make_step(model, x, mode: str, zero_grad: bool = False) -> Callable[[], None]:
    """One timed unit: a no-grad forward (``infer``) or forward + backward (``train``).

    The training loss is ``sum_i mean(out_i ** 2)`` over the model's outputs (the four stage
    maps of a dense backbone, the logits of a classifier).
    """
    import torch
    if mode == 'infer':
        def step() -> None:
            with torch.no_grad():
                model(x)
        return step
    if mode != 'train':
        raise ValueError(f'mode={mode!r} must be one of {MODES}')

    def train_step() -> None:
        if zero_grad:
            model.zero_grad(set_to_none=True)
        outs = model(x)
        outs = (outs, ) if isinstance(outs, torch.Tensor) else outs
        loss = sum(o.float().pow(2).mean() for o in outs)
        loss.backward()
    return train_step


def forward_macs(model, x) -> int:
    """Multiply-adds of one forward of ``model(x)`` (whole batch), traced in eval mode."""
    from mmsgformer.analysis.flops import analyze_model
    training = model.training
    model.eval()
    try:
        return analyze_model(model, (x, ), backbone_name=None).flops
    finally:
        model.train(training)


# --------------------------------------------------------------------------------------------
# worker (runs in a fresh process)


def run_worker(spec: dict) -> dict:
    """Measure one cell described by ``spec`` (see :func:`cell_specs`); returns ``spec`` plus
    ``step_s`` (the ``spec['stat']`` of ``times``), memory, cpu share, params and GMac."""
    import gc

    import torch
    torch.set_num_threads(spec['threads'])
    # import every codebase in every worker so baselines are comparable
    import mmdet.models  # noqa: F401
    import mmpretrain.models  # noqa: F401

    import mmsgformer  # noqa: F401
    from mmsgformer.utils import PeakRSS
    torch.manual_seed(0)
    hw = tuple(spec['size'])
    mode = spec.get('mode', 'infer')
    model = build_model(spec['model'], spec['dense'], hw, with_cp=spec.get('with_cp', False))
    model.train(mode == 'train')
    x = torch.randn(spec['batch'], 3, *hw)
    step = make_step(model, x, mode, spec.get('zero_grad', False))
    times, utils, sys_shares = [], [], []
    with PeakRSS() as mem:
        for _ in range(spec['warmup']):
            step()
        for _ in range(spec['repeats']):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            step()
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            user, kernel = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
            times.append(t1 - t0)
            utils.append((user + kernel) / max(t1 - t0, 1e-9) / spec['threads'])
            sys_shares.append(kernel / max(user + kernel, 1e-9))
    stat = spec.get('stat', 'median')
    step_s = min(times) if stat == 'best' else statistics.median(times)
    res = dict(spec, step_s=step_s, times=times, cpu_util=statistics.median(utils),
               sys_share=statistics.median(sys_shares),
               base_mib=mem.base_mib, peak_mib=mem.peak_mib, growth_mib=mem.growth_mib,
               peak_reset=mem.reset_ok, params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    if spec.get('gmac', True):
        model.zero_grad(set_to_none=True)
        gc.collect()
        fwd = forward_macs(model, x)
        factor = TRAIN_MAC_FACTOR if mode == 'train' else 1
        res.update(gmac_fwd=fwd / 1e9, gmac_step=factor * fwd / 1e9,
                   gmac_per_s=factor * fwd / 1e9 / step_s)
    return res


def run_gemm_reference(spec: dict) -> dict:
    """The multiply-add rate of one large float32 GEMM on ``spec['threads']`` threads: the
    best of ``spec['repeats']`` (default 5) ``torch.mm`` calls after one warm-up call."""
    import torch
    torch.set_num_threads(spec['threads'])
    n = spec.get('n', GEMM_SIZE)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.mm(a, b)
    times = []
    for _ in range(spec.get('repeats', 5)):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return dict(spec, gemm_gmac_per_s=n ** 3 / 1e9 / min(times), times=times)


def measure(spec: dict, timeout: float) -> dict:
    """Run one cell in a fresh interpreter and parse its result line."""
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(spec)]
    env = dict(os.environ, **MALLOC_ENV[spec.get('malloc', 'system')])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f'timeout after {timeout:.0f} s')
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    return dict(spec, error=f'exit {proc.returncode}: {tail[0][:160]}')


def combine_rounds(rounds: Sequence[Sequence[dict]]) -> List[dict]:
    """One result per cell from ``rounds`` (each a list of the cells' results, in cell order).

    A single round is returned as it is. Several: the median over rounds of the time, memory and
    cpu figures (GMac/s recomputed from the median time), and ``round_step_s`` /
    ``round_growth_mib``, the per-round values the table's ratios are taken from; a cell that
    failed in any round is reported as failed."""
    if len(rounds) == 1:
        return list(rounds[0])
    combined = []
    for cell in zip(*rounds):
        failed = [r for r in cell if 'error' in r]
        if failed:
            combined.append(failed[0])
            continue
        res = dict(cell[0], rounds=len(cell), times=[t for r in cell for t in r['times']],
                   round_step_s=[r['step_s'] for r in cell],
                   round_growth_mib=[r['growth_mib'] for r in cell])
        for key in ('step_s', 'cpu_util', 'sys_share', 'peak_mib', 'growth_mib', 'base_mib'):
            res[key] = statistics.median(r[key] for r in cell)
        if res.get('gmac_step') is not None:
            res['gmac_per_s'] = res['gmac_step'] / res['step_s']
        combined.append(res)
    return combined


# --------------------------------------------------------------------------------------------
# table


def row_name(r: dict) -> str:
    """The model column: the model name, ``+cp`` for a ``with_cp=True`` row."""
    return r['model'] + ('+cp' if r.get('with_cp') else '')


def _fmt(v: Optional[float], spec: str) -> str:
    return 'n/a' if v is None else format(v, spec)


def _percent(v: Optional[float]) -> str:
    return 'n/a' if v is None else f'{100 * v:.0f}%'


def _round_count(results: Sequence[dict]) -> int:
    """How many rounds the results were measured in (1 unless :func:`combine_rounds` merged
    several)."""
    return max((r.get('rounds', 1) for r in results), default=1)


def _ratios(r: dict, ref: dict, key: str) -> Optional[List[float]]:
    """Ratios ``r / ref`` of ``key`` (seconds per image for ``step_s``): one per round
    (``round_<key>``) for merged rounds, else the single one; None when the reference's value is
    not positive."""
    a, b = r.get('round_' + key, [r[key]]), ref.get('round_' + key, [ref[key]])
    if len(a) != len(b) or min(b) <= 0:
        return None
    per = (r['batch'], ref['batch']) if key == 'step_s' else (1, 1)
    return [(x / per[0]) / (y / per[1]) for x, y in zip(a, b)]


def format_table(results: List[dict], reference: str = REFERENCE,
                 gemm_rate: Optional[float] = None) -> str:
    """One table of inference and training rows, with footnotes.

    Ratios are against the ``reference`` model (Swin-T, without ``with_cp``) of the same mode and
    input measured in the same run: ``time vs`` compares seconds per image (> 1 = slower),
    ``growth vs`` the peak memory growth. With several rounds (:func:`combine_rounds`) a ratio
    is the median of the per-round ratios (each round's two cells ran close in time), and the
    ``rounds`` column gives the lowest and highest per-round time ratio. Rows with a cpu share
    under 90% are marked ``!``. ``gemm_rate`` (GMac/s of the reference GEMM,
    :func:`run_gemm_reference`) adds the ``GEMM share`` column.
    """
    ref = {}
    for r in results:
        if 'error' not in r and r['model'] == reference and not r.get('with_cp'):
            ref[(r.get('mode', 'infer'), r['size_name'])] = r
    short = 'Swin-T' if reference == 'swin-t' else reference
    n_rounds = _round_count(results)
    head = (f"{'model':<18} {'mode':<5} {'input':>9} {'batch':>5} {'img/s':>8} {'s/step':>8} "
            f"{'time vs ' + short:>14} " + (f"{'rounds':>11} " if n_rounds > 1 else '')
            + f"{'GMac':>9} {'GMac/s':>8} {'peak MiB':>9} "
            f"{'growth MiB':>10} {'growth vs ' + short:>16} {'cpu':>5} {'sys':>4} {'params M':>9}"
            + (f" {'GEMM share':>10}" if gemm_rate else ''))
    lines = [head, '-' * len(head)]
    flagged = train_rows = 0
    for r in results:
        mode = r.get('mode', 'infer')
        if 'error' in r:
            lines.append(f"{row_name(r):<18} {mode:<5} {r['size_name']:>9} {r['batch']:>5}  "
                         f"FAILED: {r['error']}")
            continue
        train_rows += mode == 'train'
        per_img = r['step_s'] / r['batch']
        rr = ref.get((mode, r['size_name']))
        times = _ratios(r, rr, 'step_s') if rr else None
        growths = _ratios(r, rr, 'growth_mib') if rr else None
        speed = f'{statistics.median(times):.2f}x' if times else 'n/a'
        spread = f'{min(times):.2f}-{max(times):.2f}' if times else 'n/a'
        mem = f'{statistics.median(growths):.2f}x' if growths else 'n/a'
        low = r['cpu_util'] < CPU_FLAG
        rate = r.get('gmac_per_s')
        gemm_share = None if rate is None or not gemm_rate else rate / gemm_rate
        flagged += low
        cpu = f"{100 * r['cpu_util']:.0f}%" + ('!' if low else ' ')
        lines.append(f"{row_name(r):<18} {mode:<5} {r['size_name']:>9} {r['batch']:>5} "
                     f"{1 / per_img:>8.3g} {r['step_s']:>8.4g} {speed:>14} "
                     + (f'{spread:>11} ' if n_rounds > 1 else '')
                     + f"{_fmt(r.get('gmac_step'), '9.4g'):>9} "
                     f"{_fmt(r.get('gmac_per_s'), '8.4g'):>8} {r['peak_mib']:>9.0f} "
                     f"{r['growth_mib']:>10.0f} {mem:>16} {cpu:>6} "
                     f"{_percent(r.get('sys_share')):>4} {r['params_m']:>9.2f}"
                     + (f" {_percent(gemm_share):>10}" if gemm_rate else ''))
    notes = [f'time / growth vs {short}: seconds per image / peak memory growth over those of '
             f'{reference} in the same mode and input in this run (> 1 = slower / more).']
    if n_rounds > 1:
        notes.append(f'{n_rounds} rounds, the cell order reversed every other round: s/step, '
                     f'memory and cpu are medians over rounds, a ratio is the median of the '
                     f'per-round ratios, rounds = its lowest-highest per-round time ratio.')
    notes.append(f'GMac: multiply-adds of one step (mmsgformer.analysis.flops on the cell\'s '
                 f'model and input); GMac/s = GMac / s/step.')
    if gemm_rate:
        notes.append(f'GEMM share: GMac/s over {gemm_rate:.1f} GMac/s, the rate of one float32 '
                     f'{GEMM_SIZE}x{GEMM_SIZE} GEMM (torch.mm, same threads) in this run'
                     + (' (median over rounds).' if n_rounds > 1 else '.'))
    if train_rows:
        notes.append(f'train rows: GMac = {TRAIN_MAC_FACTOR}x the forward\'s multiply-adds '
                     f'(forward + backward).')
    if flagged:
        notes.append(f'! cpu share under {100 * CPU_FLAG:.0f}%: the machine was busy during '
                     f'that row ({flagged} row(s)); its times are unreliable.')
    return '\n'.join(lines + [''] + notes)


def describe_protocol(results: Sequence[dict], threads: int) -> str:
    """The header line: threads, and per mode the warm-up/repeats/statistic actually used."""
    parts = []
    for mode in MODES:
        rows = [r for r in results if r.get('mode', 'infer') == mode]
        if not rows:
            continue
        timing = sorted({(r['warmup'], r['repeats'], r.get('stat', 'median')) for r in rows})
        how = ', '.join(f'{w} warm-up + {s} of {n}' for w, n, s in timing)
        if mode == 'infer':
            parts.append(f'infer rows: eval, no_grad, {how} forwards')
        else:
            zg = ', zero_grad before each step' if any(r.get('zero_grad') for r in rows) else ''
            parts.append(f'train rows: train mode, drop path 0, loss = sum of mean squares of '
                         f'the outputs, backward{zg}, {how} steps')
    malloc = sorted({r.get('malloc', 'system') for r in results})
    how = ('glibc malloc defaults' if malloc == ['system'] else
           'malloc ' + '/'.join(malloc) + ' (' + ', '.join(
               f'{k}={v}' for m in malloc for k, v in MALLOC_ENV[m].items()) + ')')
    n_rounds = _round_count(results)
    cells = ('one fresh process per row' if n_rounds == 1 else
             f'one fresh process per row and round, {n_rounds} rounds')
    return (f'CPU benchmark: torch.set_num_threads({threads}), {cells}, '
            f'{how}; ' + '; '.join(parts))


# --------------------------------------------------------------------------------------------
# profile


def profile(name: str, mode: str, size_name: str, batch: Optional[int], repeats: int,
            threads: int, rows: int, with_cp: bool = False) -> str:
    """Top ops of ``repeats`` steps (after one untimed step) by self CPU time (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    import mmsgformer  # noqa: F401
    torch.set_num_threads(threads)
    hw, dense = parse_size(size_name)
    model = build_model(name, dense, hw, with_cp=with_cp)
    model.train(mode == 'train')
    x = torch.randn(batch or default_batch(mode, size_name), 3, *hw)
    step = make_step(model, x, mode)
    step()
    with tprofile(activities=[ProfilerActivity.CPU], profile_memory=mode == 'train') as prof:
        for _ in range(repeats):
            step()
    return (f'{name} {mode} at {size_name}, batch {x.shape[0]}, {repeats} step(s), '
            f'{threads} threads\n' +
            prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


# --------------------------------------------------------------------------------------------
# breakdown

# the parts a breakdown times, per family: the attention modules, FFNs and embeddings of the blocks
BREAKDOWN_PARTS = {
    'sgformer': ('HybridScaleAttention', 'SelfGuidedAttention', 'StandardAttention', 'Mlp',
                 'ConvStem', 'ConvDownsample'),
    'swin': ('ShiftWindowMSA', 'FFN', 'PatchMerging', 'PatchEmbed'),
    'focal': ('FocalAttention', 'Mlp', 'FocalPatchEmbed'),
}


def breakdown(name: str, size_name: str, batch: Optional[int], repeats: int,
              threads: int) -> str:
    """Inference time and multiply-adds per part of ``name`` (eval, no grad).

    The modules of :data:`BREAKDOWN_PARTS` (outermost ones only) are timed with forward hooks
    over ``repeats`` forwards after one untimed forward and grouped by class and stage; their
    multiply-adds come from :mod:`mmsgformer.analysis.flops` (``by_module``). ``other`` is the
    forward's time outside those parts (norms, residual adds, reshapes).
    """
    import re

    import torch

    import mmsgformer  # noqa: F401
    from mmsgformer.analysis.flops import make_flop_analyzer
    torch.set_num_threads(threads)
    hw, dense = parse_size(size_name)
    model = build_model(name, dense, hw)
    x = torch.randn(batch or default_batch('infer', size_name), 3, *hw)
    classes = BREAKDOWN_PARTS[MODELS[name][0]]
    parts: Dict[str, str] = {}
    for mod_name, mod in model.named_modules():
        inside = any(mod_name.startswith(p + '.') for p in parts)
        if type(mod).__name__ in classes and not inside:
            stage = re.search(r'(?:block|stages\.|layers\.)(\d)', mod_name)
            label = type(mod).__name__
            if stage:
                label += f' (stage {int(stage.group(1)) + (0 if "block" in stage.group(0) else 1)})'
            parts[mod_name] = label
    with torch.no_grad():
        by_module = make_flop_analyzer(model, x).by_module()
    macs: Dict[str, float] = {}
    for mod_name, label in parts.items():
        macs[label] = macs.get(label, 0) + by_module.get(mod_name, 0)
    spent: Dict[str, float] = dict.fromkeys(macs, 0.)
    started: Dict[str, float] = {}
    modules = dict(model.named_modules())
    handles = []
    for mod_name, label in parts.items():
        def pre(_m, _i, mod_name=mod_name):
            started[mod_name] = time.perf_counter()

        def post(_m, _i, _o, mod_name=mod_name, label=label):
            spent[label] += time.perf_counter() - started[mod_name]
        handles += [modules[mod_name].register_forward_pre_hook(pre),
                    modules[mod_name].register_forward_hook(post)]
    with torch.no_grad():
        model(x)
        spent = dict.fromkeys(spent, 0.)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
        total = (time.perf_counter() - t0) / repeats
    for h in handles:
        h.remove()
    total_macs = by_module.get('', sum(macs.values()))
    lines = [f'{name} infer at {size_name}, batch {x.shape[0]}, {threads} thread(s), mean of '
             f'{repeats} forward(s): {total:.3f} s, {total_macs / 1e9:.4g} GMac, '
             f'{total_macs / 1e9 / total:.1f} GMac/s',
             f"{'part':<34} {'s':>8} {'share':>6} {'GMac':>8} {'GMac/s':>7}"]
    rows = sorted(((s / repeats, label) for label, s in spent.items()), reverse=True)
    for sec, label in rows + [(total - sum(s for s, _ in rows), 'other')]:
        gmac = macs.get(label, total_macs - sum(macs.values())) / 1e9
        rate = f'{gmac / sec:7.1f}' if sec > 0 else '    n/a'
        lines.append(f'{label:<34} {sec:8.3f} {100 * sec / total:5.1f}% {gmac:8.4g} {rate}')
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES,
                   help='infer (no-grad forward) and/or train (forward + backward)')
    p.add_argument('--models', nargs='+',
                   help=f'models to run (default: infer 224: {DEFAULT_224}; infer dense: '
                        f'{DEFAULT_DET}; train: {DEFAULT_TRAIN}); choices: {sorted(MODELS)}')
    p.add_argument('--sizes', nargs='+',
                   help=f'inputs: N = classifier at NxN, HxW = dense backbone (default per '
                        f'mode: {DEFAULT_SIZES})')
    p.add_argument('--batch', type=int, help=f'override the batch sizes {DEFAULT_BATCH}')
    p.add_argument('--warmup', type=int, help='untimed steps (default: infer 3, train 1)')
    p.add_argument('--repeats', type=int, help='timed steps (default: infer 5, train 2)')
    p.add_argument('--stat', choices=['median', 'best'],
                   help='statistic of the timed steps (default: infer median, train best)')
    p.add_argument('--zero-grad', action='store_true',
                   help='train: model.zero_grad(set_to_none=True) before every step')
    p.add_argument('--with-cp', action='store_true',
                   help='train: also run every model with with_cp=True (rows named MODEL+cp)')
    p.add_argument('--no-gmac', action='store_true',
                   help='skip counting the multiply-adds (one traced forward per cell)')
    p.add_argument('--reference', default=REFERENCE, choices=sorted(MODELS),
                   help='the model the ratio columns compare with (default %(default)s)')
    p.add_argument('--malloc', choices=sorted(MALLOC_ENV), default='system',
                   help='system: glibc defaults (large blocks go back to the kernel on free); '
                        'retain: freed memory stays in the process (like a caching allocator)')
    p.add_argument('--rounds', type=int, default=1,
                   help='measure every cell this many times, the cell order reversed every other '
                        'round; the table gives medians over rounds (default %(default)s)')
    p.add_argument('--threads', type=int, default=THREADS)
    p.add_argument('--timeout', type=float, default=1800., help='seconds per cell')
    p.add_argument('--json', help='also write all results to this JSON file')
    p.add_argument('--profile', metavar='MODEL', help='print the top ops of MODEL and exit')
    p.add_argument('--profile-rows', type=int, default=25)
    p.add_argument('--breakdown', metavar='MODEL',
                   help='print the inference time and GMac/s of each part of MODEL and exit')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in args.models or []:
        if name not in MODELS:
            p.error(f'--models: {name!r} is not one of {sorted(MODELS)}')
    for opt in ('profile', 'breakdown'):
        if getattr(args, opt) and getattr(args, opt) not in MODELS:
            p.error(f'--{opt}: {getattr(args, opt)!r} is not one of {sorted(MODELS)}')
    if (args.repeats is not None and args.repeats < 1) or (args.warmup or 0) < 0:
        p.error(f'--repeats={args.repeats} must be >= 1 and --warmup={args.warmup} >= 0')
    for token in args.sizes or []:
        try:
            parse_size(token)
        except ValueError as e:
            p.error(f'--sizes: {e}')
    if args.batch is not None and args.batch < 1:
        p.error(f'--batch={args.batch} must be >= 1')
    if args.rounds < 1:
        p.error(f'--rounds={args.rounds} must be >= 1')
    return args


def cell_specs(args: argparse.Namespace) -> List[dict]:
    """The cells to measure, in table order: per mode, per input, per model (+cp twins)."""
    specs = []
    for mode in args.modes:
        warmup, repeats, stat = DEFAULT_TIMING[mode]
        for size_name in args.sizes or DEFAULT_SIZES[mode]:
            if args.models:
                names = args.models
            elif mode == 'train':
                names = DEFAULT_TRAIN
            else:
                names = DEFAULT_224 if size_name == '224' else DEFAULT_DET
            hw, dense = parse_size(size_name)
            cps = [False, True] if args.with_cp and mode == 'train' else [False]
            for name in names:
                for cp in cps:
                    specs.append(dict(
                        model=name, mode=mode, size_name=size_name, size=list(hw),
                        batch=args.batch or default_batch(mode, size_name),
                        dense=dense, with_cp=cp,
                        warmup=warmup if args.warmup is None else args.warmup,
                        repeats=repeats if args.repeats is None else args.repeats,
                        stat=args.stat or stat, zero_grad=args.zero_grad and mode == 'train',
                        gmac=not args.no_gmac, threads=args.threads, malloc=args.malloc))
    return specs


def main(argv: Optional[Sequence[str]] = None, emit: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        run = run_gemm_reference if spec.get('kind') == 'gemm' else run_worker
        emit(RESULT_TAG + json.dumps(run(spec)))
        return 0
    if args.profile:
        for mode in args.modes:
            for size_name in args.sizes or DEFAULT_SIZES[mode]:
                emit(profile(args.profile, mode, size_name, args.batch, args.repeats or 1,
                             args.threads, args.profile_rows, args.with_cp))
        return 0
    if args.breakdown:
        for size_name in args.sizes or DEFAULT_SIZES['infer']:
            emit(breakdown(args.breakdown, size_name, args.batch, args.repeats or 3,
                           args.threads))
        return 0
    specs = cell_specs(args)
    rounds, gemm_rates = [], []
    for r in range(args.rounds):
        order = list(range(len(specs)))[::-1 if r % 2 else 1]
        results: List[Optional[dict]] = [None] * len(specs)
        for i in order:
            spec, t0 = specs[i], time.perf_counter()
            res = measure(spec, args.timeout)
            print(f"# {f'round {r + 1}/{args.rounds}: ' if args.rounds > 1 else ''}"
                  f"{row_name(spec)} {spec['mode']} @ {spec['size_name']}: "
                  f"{res.get('error') or format(res['step_s'], '.3f') + ' s/step'} "
                  f'({time.perf_counter() - t0:.0f} s incl. start-up)', file=sys.stderr)
            results[i] = res
        rounds.append(results)
        if not args.no_gmac:  # the machine's GEMM rate, after the round's rows (same conditions)
            gemm = measure(dict(kind='gemm', threads=args.threads, malloc=args.malloc),
                           args.timeout)
            if 'error' not in gemm:
                gemm_rates.append(gemm['gemm_gmac_per_s'])
    results = combine_rounds(rounds)
    gemm_rate = statistics.median(gemm_rates) if gemm_rates else None
    emit(describe_protocol(results, args.threads))
    emit(format_table(results, args.reference, gemm_rate))
    if args.json:  # the rows, each with the run's GEMM rate
        with open(args.json, 'w') as f:
            json.dump([dict(r, gemm_gmac_per_s=gemm_rate) for r in results], f, indent=1)
    return 0 if all('error' not in r for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
