"""Benchmark the compiled sg_aggregate op against the pure-PyTorch reference on the CPU.

One run prints a table: forward (inference, ``torch.no_grad``) and forward+backward (training)
time in ms, peak extra memory in MB, and the bytes each implementation saves for backward, at
the stage-1 sizes of SG-Former (sr ratio 8, C=64) for a 224x224 image (B=8, N=3136) and for an
800x1344 detection image (B=2, N=200*336=67200).

Memory: peak resident set size above the level before the call, read from the kernel
(:class:`mmsgformer.utils.PeakRSS`: ``VmHWM`` after resetting it through
``/proc/self/clear_refs``, minus ``VmRSS`` after the reset). It sees every allocation (torch's
and the extension's own), unlike ``tracemalloc``. The script re-executes itself with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the OS and each measurement
starts from the same level. Linux only (elsewhere memory shows as n/a).

Usage: python tools/analysis_tools/benchmark_op.py [--threads 2] [--repeat 10]
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, Optional

SIZES = [  # (name, B, N, C, sr_ratio)
    ('224x224 stage 1', 8, 56 * 56, 64, 8),
    ('800x1344 stage 1', 2, 200 * 336, 64, 8),
]


def peak_extra_mb(fn: Callable[[], object]) -> Optional[float]:
    """Peak RSS above the current level while ``fn()`` runs, in MiB (None if unsupported)."""
    from mmsgformer.utils import PeakRSS  # (imports torch: after the re-exec in main)
    with PeakRSS() as mem:
        fn()
    return mem.growth_mib if mem.reset_ok else None


def time_ms(fn, repeat, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    parser.add_argument('--repeat', type=int, default=10, help='timed runs (median reported)')
    parser.add_argument('--warmup', type=int, default=2)
    args = parser.parse_args()

    if sys.platform.startswith('linux') and 'MALLOC_MMAP_THRESHOLD_' not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
        os.execve(sys.executable, [sys.executable] + sys.argv, env)

    import torch

    from mmsgformer.ops import op_available, segment_layout, sg_aggregate

    if not op_available():
        sys.exit('the mmsgformer C++ extension is not built: nothing to benchmark')
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'median of {args.repeat} runs; memory = peak RSS above the level before the call')

    rows = []
    for name, B, N, C, r in SIZES:
        layout = segment_layout(N, r)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(B, N, C, generator=gen, requires_grad=True)
        order = torch.argsort(torch.rand(B, N, generator=gen), dim=1)
        w = torch.cat([(torch.rand(g, generator=gen) * 2 - 1) / g ** 0.5
                       for g in layout.group_sizes]).requires_grad_()
        b = torch.zeros(layout.num_segments, requires_grad=True)
        grad = torch.randn(B, layout.num_out, C, generator=gen)

        outs = {}
        for impl in ('reference', 'op'):
            def forward(impl=impl):
                with torch.no_grad():
                    return sg_aggregate(x, order, w, b, layout, impl=impl)

            def train_step(impl=impl):
                sg_aggregate(x, order, w, b, layout, impl=impl).backward(grad)
                x.grad = w.grad = b.grad = None  # (so every call allocates fresh gradients)

            saved = []
            with torch.autograd.graph.saved_tensors_hooks(
                    lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
                sg_aggregate(x, order, w, b, layout, impl=impl)
            out = sg_aggregate(x, order, w, b, layout, impl=impl)
            outs[impl] = (out.detach(), *torch.autograd.grad(out, (x, w), grad))
            rows.append(dict(
                size=f'{name} B={B} N={N} C={C}', impl=impl,
                fwd=time_ms(forward, args.repeat, args.warmup),
                fwd_mem=peak_extra_mb(forward),
                fb=time_ms(train_step, args.repeat, args.warmup),
                fb_mem=peak_extra_mb(train_step),
                saved=sum(saved) / 2 ** 20))
        diffs = [((a - e).abs().max() / e.abs().max()).item()
                 for a, e in zip(outs['op'], outs['reference'])]
        print(f'{name}: float32 max |op - reference| / max |reference|: out {diffs[0]:.1e}, '
              f'dL/dx {diffs[1]:.1e}, dL/dw {diffs[2]:.1e}')

    def mb(v):
        return 'n/a' if v is None else f'{v:.2f}'

    header = ('| size | impl | fwd ms | fwd peak MB | fwd+bwd ms | fwd+bwd peak MB | '
              'saved for bwd MB | fwd+bwd speed-up |')
    print()
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for row in rows:
        ref = next(r for r in rows if r['size'] == row['size'] and r['impl'] == 'reference')
        speed = ref['fb'] / row['fb']
        print(f"| {row['size']} | {row['impl']} | {row['fwd']:.2f} | {mb(row['fwd_mem'])} | "
              f"{row['fb']:.2f} | {mb(row['fb_mem'])} | {row['saved']:.1f} | {speed:.2f}x |")


if __name__ == '__main__':
    main()
