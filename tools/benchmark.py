"""CPU speed and memory benchmark: SG-Former vs Swin (mmpretrain / mmdet) vs Focal Transformer.

Prints ONE table. Every (model, input size) cell is measured in a fresh subprocess, so the peak
RSS belongs to that model alone; each subprocess uses ``torch.set_num_threads(THREADS)``, eval
mode and ``torch.no_grad()``, runs ``--warmup`` untimed forwards and reports the median of
``--repeats`` timed forwards.

* ``224`` rows: classifier (backbone + global average pool + Linear(C, 1000)), batch 8, img/s.
* ``800x1344`` rows: backbone only (all four stage outputs, as in Mask R-CNN), batch 1,
  seconds per image.

Memory: ``peak MiB`` is the process's peak RSS (``VmHWM``) during the forwards; the high-water
mark is reset right after the model and input are built (``/proc/self/clear_refs``), and
``growth MiB`` is that peak minus the RSS at that moment (model weights and the
Python/torch/mm* import baseline excluded). ``cpu`` is the process CPU time over wall time
divided by the thread count during the timed runs (well below 100 % means the machine was
busy and the cell is unreliable).

Usage::

    python tools/benchmark.py                                  # full table (several minutes)
    python tools/benchmark.py --models sgformer-s swin-t --sizes 224 --repeats 3
    python tools/benchmark.py --models sgformer-tiny --sizes 224 --batch 1 --repeats 1 --warmup 0
    python tools/benchmark.py --profile sgformer-s --sizes 224      # top ops (torch.profiler)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

THREADS = 2
RESULT_TAG = 'BENCHMARK_RESULT '

# name -> (family, arch) ; built by _build_backbone
MODELS: Dict[str, Tuple[str, str]] = {
    'sgformer-s': ('sgformer', 's'),
    'sgformer-m': ('sgformer', 'm'),
    'sgformer-b': ('sgformer', 'b'),
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
DEFAULT_224 = ['sgformer-s', 'sgformer-m', 'sgformer-b', 'swin-t', 'swin-s', 'swin-b',
               'focal-t', 'focal-s', 'focal-b']
DEFAULT_DET = ['sgformer-s', 'swin-t', 'focal-t']
SIZES = {'224': ((224, 224), 8), '800x1344': ((800, 1344), 1)}

# a 2-stage-pair SG-Former small enough for smoke tests (even depths in stages 1-3)
SGFORMER_TINY = dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 4, 4], depths=[2, 2, 2, 1])
SWIN_TINY_TEST = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
FOCAL_TINY_TEST = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])


def _build_backbone(family: str, arch: str, dense: bool, img_hw: Tuple[int, int]):
    """The backbone; ``dense`` = all four outputs (detection), else the last stage only."""
    out_indices = (0, 1, 2, 3) if dense else (3, )
    if family == 'sgformer':
        from mmsgformer.models.sgformer import SGFormer
        a = dict(SGFORMER_TINY) if arch == 'tiny' else arch
        return SGFormer(arch=a, out_indices=out_indices, pretrain_img_size=224,
                        mlp_ratio=2 if arch == 'tiny' else 4)
    if family == 'focal':
        from mmsgformer.models.focal_transformer import FocalTransformer
        a = dict(FOCAL_TINY_TEST) if arch == 'tiny-test' else arch
        # dense inputs: the border handling the detection/segmentation configs use
        return FocalTransformer(arch=a, out_indices=out_indices,
                                border_mode='masked' if dense else 'official')
    if family == 'swin':
        if dense:
            # mmdet's Swin as in configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py
            from mmdet.models.backbones import SwinTransformer
            dims = {'tiny': (96, [2, 2, 6, 2], [3, 6, 12, 24]),
                    'small': (96, [2, 2, 18, 2], [3, 6, 12, 24]),
                    'base': (128, [2, 2, 18, 2], [4, 8, 16, 32]),
                    'tiny-test': (16, [1, 1, 1, 1], [1, 1, 2, 2])}[arch]
            return SwinTransformer(embed_dims=dims[0], depths=dims[1], num_heads=dims[2],
                                   window_size=7, mlp_ratio=4, qkv_bias=True,
                                   drop_path_rate=0.2, patch_norm=True,
                                   out_indices=out_indices, convert_weights=False)
        from mmpretrain.models import SwinTransformer
        a = dict(SWIN_TINY_TEST) if arch == 'tiny-test' else arch
        return SwinTransformer(arch=a, img_size=img_hw, out_indices=out_indices)
    raise ValueError(f'unknown model family {family!r}')


def build_model(name: str, dense: bool, img_hw: Tuple[int, int]):
    """``dense=False``: backbone + GAP + Linear(C, 1000); ``dense=True``: backbone only."""
    import torch
    import torch.nn as nn
    if name not in MODELS:
        raise ValueError(f'model {name!r} is not one of {sorted(MODELS)}')
    backbone = _build_backbone(*MODELS[name], dense=dense, img_hw=img_hw)
    backbone.eval()
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


# --------------------------------------------------------------------------------------------
# worker (runs in a fresh process)


def _status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def run_worker(spec: dict) -> dict:
    import gc

    import torch
    torch.set_num_threads(spec['threads'])
    # import every codebase in every worker so baselines are comparable
    import mmdet.models  # noqa: F401
    import mmpretrain.models  # noqa: F401
    import mmsgformer  # noqa: F401
    torch.manual_seed(0)
    hw = tuple(spec['size'])
    model = build_model(spec['model'], spec['dense'], hw)
    model.eval()  # not chained: mmdet's SwinTransformer.train() returns None
    x = torch.randn(spec['batch'], 3, *hw)
    gc.collect()
    # Reset the high-water mark first, then read the baseline: VmHWM >= the RSS read after it.
    reset_ok = _reset_peak()
    base_kib = _status_kib('VmRSS') or 0
    times, utils = [], []
    with torch.no_grad():
        for _ in range(spec['warmup']):
            model(x)
        for _ in range(spec['repeats']):
            c0, t0 = time.process_time(), time.perf_counter()
            model(x)
            t1, c1 = time.perf_counter(), time.process_time()
            times.append(t1 - t0)
            utils.append((c1 - c0) / max(t1 - t0, 1e-9) / spec['threads'])
    peak_kib = _status_kib('VmHWM') if reset_ok else None
    if peak_kib is None:  # lifetime peak (includes construction) when the reset is unavailable
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The kernel updates the high-water mark lazily (and reading /proc allocates a little after
    # the reset), so VmHWM can read a few KiB under the baseline; the window's peak includes it.
    peak_kib = max(peak_kib, base_kib)
    params = sum(p.numel() for p in model.parameters())
    return dict(spec, median_s=statistics.median(times), times=times,
                cpu_util=statistics.median(utils), base_mib=base_kib / 1024,
                peak_mib=peak_kib / 1024, growth_mib=(peak_kib - base_kib) / 1024,
                peak_reset=reset_ok, params_m=params / 1e6)


def measure(spec: dict, timeout: float) -> dict:
    """Run one cell in a fresh interpreter and parse its result line."""
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f'timeout after {timeout:.0f} s')
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    return dict(spec, error=f'exit {proc.returncode}: {tail[0][:160]}')


# --------------------------------------------------------------------------------------------
# table


def format_table(results: List[dict], reference: Dict[str, str]) -> str:
    """One table; ratios are against ``reference[size]`` (Swin-T) measured in the same run."""
    ref = {}
    for r in results:
        if 'error' not in r and r['model'] == reference.get(r['size_name']):
            ref[r['size_name']] = r
    head = (f"{'model':<16} {'input':>9} {'batch':>5} {'img/s':>8} {'s/iter':>8} "
            f"{'vs Swin-T':>9} {'peak MiB':>9} {'growth MiB':>10} {'growth vs Swin-T':>16} "
            f"{'cpu':>5} {'params M':>9}")
    lines = [head, '-' * len(head)]
    for r in results:
        if 'error' in r:
            lines.append(f"{r['model']:<16} {r['size_name']:>9} {r['batch']:>5}  "
                         f"FAILED: {r['error']}")
            continue
        ips = r['batch'] / r['median_s']
        rr = ref.get(r['size_name'])
        speed = f"{ips / (rr['batch'] / rr['median_s']):.2f}x" if rr else 'n/a'
        mem = (f"{r['growth_mib'] / rr['growth_mib']:.2f}x"
               if rr and rr['growth_mib'] > 0 else 'n/a')
        lines.append(f"{r['model']:<16} {r['size_name']:>9} {r['batch']:>5} {ips:>8.2f} "
                     f"{r['median_s']:>8.3f} {speed:>9} {r['peak_mib']:>9.0f} "
                     f"{r['growth_mib']:>10.0f} {mem:>16} {100 * r['cpu_util']:>4.0f}% "
                     f"{r['params_m']:>9.2f}")
    return '\n'.join(lines)


def profile(name: str, size_name: str, batch: Optional[int], repeats: int,
            threads: int, rows: int) -> str:
    """Top ops of ``repeats`` forwards by self CPU time (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    torch.set_num_threads(threads)
    hw, default_batch = SIZES[size_name]
    dense = size_name != '224'
    model = build_model(name, dense, hw)
    model.eval()
    x = torch.randn(batch or default_batch, 3, *hw)
    with torch.no_grad():
        model(x)
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x)
    return (f'{name} at {size_name}, batch {x.shape[0]}, {repeats} forwards, '
            f'{threads} threads\n' +
            prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+',
                   help=f'models to run (default: 224: {DEFAULT_224}; 800x1344: {DEFAULT_DET}); '
                        f'choices: {sorted(MODELS)}')
    p.add_argument('--sizes', nargs='+', default=['224', '800x1344'], choices=sorted(SIZES))
    p.add_argument('--batch', type=int, help='override the batch size (224: 8, 800x1344: 1)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=THREADS)
    p.add_argument('--timeout', type=float, default=900., help='seconds per cell')
    p.add_argument('--json', help='also write all results to this JSON file')
    p.add_argument('--profile', metavar='MODEL', help='print the top ops of MODEL and exit')
    p.add_argument('--profile-rows', type=int, default=25)
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in args.models or []:
        if name not in MODELS:
            p.error(f'--models: {name!r} is not one of {sorted(MODELS)}')
    if args.profile and args.profile not in MODELS:
        p.error(f'--profile: {args.profile!r} is not one of {sorted(MODELS)}')
    if args.repeats < 1 or args.warmup < 0:
        p.error(f'--repeats={args.repeats} must be >= 1 and --warmup={args.warmup} >= 0')
    return args


def main(argv=None, emit: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    if args.worker:
        emit(RESULT_TAG + json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.profile:
        for size_name in args.sizes:
            emit(profile(args.profile, size_name, args.batch, args.repeats, args.threads,
                         args.profile_rows))
        return 0
    results = []
    for size_name in args.sizes:
        hw, batch = SIZES[size_name]
        names = args.models or (DEFAULT_224 if size_name == '224' else DEFAULT_DET)
        for name in names:
            spec = dict(model=name, size_name=size_name, size=list(hw),
                        batch=args.batch or batch, dense=size_name != '224',
                        warmup=args.warmup, repeats=args.repeats, threads=args.threads)
            t0 = time.perf_counter()
            res = measure(spec, args.timeout)
            print(f'# {name} @ {size_name}: '
                  f"{res.get('error') or format(res['median_s'], '.3f') + ' s/iter'} "
                  f'({time.perf_counter() - t0:.0f} s incl. start-up)', file=sys.stderr)
            results.append(res)
    emit(f'CPU benchmark: torch.set_num_threads({args.threads}), eval, no_grad, '
         f'{args.warmup} warm-up + median of {args.repeats}; one fresh process per row')
    emit(format_table(results, {'224': 'swin-t', '800x1344': 'swin-t'}))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 0 if all('error' not in r for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
