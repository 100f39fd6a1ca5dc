"""Benchmark the attention ops' CPU kernels against PyTorch's flash kernel, call by call.

One run prints a table: for SG-Former-S's attention shapes (head width 32), the time of
``F.scaled_dot_product_attention`` and of ``mmsgformer::dot_product_attention`` (or
``dot_product_attention_key_mass`` for the coarse branch) with each vector kernel this CPU
runs (AVX-512 and AVX2 on an AVX-512 CPU, chosen with ``MMSGFORMER_CPU_ATTENTION``), in
inference and forward + backward. The calls alternate (PyTorch, kernel 1, kernel 2, then the
order reversed) so that a VM whose speed drifts hurts each alike; the minimum and the median of
the repeats are printed, with the kernel's minimum over PyTorch's. The coarse branch's PyTorch
time is the output alone (PyTorch has no key mass; the model's chunked pass costs more).

Usage: python tools/analysis_tools/benchmark_attention.py [--threads 2] [--repeat 10] [--small]
"""
import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Tuple

# (name, B, H, Nq, Nk, pass): SG-Former-S at 800x1344 (B=1) and 512x512 (B=4)
SHAPES = [
    ('self-guided, stage 3, 800x1344', 1, 8, 4200, 3150, 'infer'),
    ('coarse branch + key mass, stage 3, 800x1344', 1, 4, 4200, 1050, 'infer+mass'),
    ('self-guided, stage 3, 512x512 B=4', 4, 8, 1024, 768, 'fwd+bwd'),
    ('self-guided, stage 1, 512x512 B=4', 4, 2, 4096, 1024, 'fwd+bwd'),
]
SMALL_SHAPES = [(name, B, H, max(1, Nq // 40), max(1, Nk // 40), mode)
                for name, B, H, Nq, Nk, mode in SHAPES]
ENV = 'MMSGFORMER_CPU_ATTENTION'


def calls(B: int, H: int, Nq: int, Nk: int, mode: str) -> Dict[str, Callable[[], object]]:
    """``{'torch': f, 'op': g}`` for one shape and pass (inputs made once, head width 32)."""
    import torch
    import torch.nn.functional as F
    op = torch.ops.mmsgformer
    gen = torch.Generator().manual_seed(0)
    grad = mode == 'fwd+bwd'
    q = torch.randn(B, Nq, H, 32, generator=gen).transpose(1, 2)  # the model's (B, N, h, d) view
    k, v = (torch.randn(B, H, Nk, 32, generator=gen) for _ in range(2))
    if grad:
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        g = torch.randn(B, H, Nq, 32, generator=gen)
        return {'torch': lambda: torch.autograd.grad(
                    F.scaled_dot_product_attention(q, k, v, scale=32 ** -0.5), (q, k, v), g),
                'op': lambda: torch.autograd.grad(
                    op.dot_product_attention(q, k, v, 32 ** -0.5)[0], (q, k, v), g)}
    forward = (op.dot_product_attention_key_mass if mode == 'infer+mass'
               else op.dot_product_attention)

    def no_grad(f):
        def run():
            with torch.no_grad():
                return f()
        return run
    return {'torch': no_grad(lambda: F.scaled_dot_product_attention(q, k, v, scale=32 ** -0.5)),
            'op': no_grad(lambda: forward(q, k, v, 32 ** -0.5))}


def alternate(fns: Dict[str, Callable[[], None]], repeat: int) -> Dict[str, List[float]]:
    """Each function once as warm-up, then ``repeat`` rounds in alternating order; ms."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for name in names:
        fns[name]()
    for i in range(repeat):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def with_kernel(kernel: str, fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` run with ``kernel`` ('avx512': the default choice, 'avx2': forced)."""
    def run():
        before = os.environ.get(ENV)
        os.environ[ENV] = 'avx2' if kernel == 'avx2' else 'auto'
        try:
            fn()
        finally:
            if before is None:
                del os.environ[ENV]
            else:
                os.environ[ENV] = before
    return run


def measure(shapes, repeat: int) -> Tuple[List[str], List[dict]]:
    from mmsgformer.ops.attention import vector_kernels_here
    names = list(vector_kernels_here())
    rows = []
    for name, B, H, Nq, Nk, mode in shapes:
        fns = calls(B, H, Nq, Nk, mode)
        timed = {'torch': fns['torch']}
        timed.update({kernel: with_kernel(kernel, fns['op']) for kernel in names})
        times = alternate(timed, repeat)
        rows.append(dict(name=name, shape=f'{B}x{H}x{Nq}x{Nk}', mode=mode, times=times))
    return names, rows


def format_table(names: List[str], rows: List[dict]) -> str:
    header = ['call', 'B x H x Nq x Nk', 'pass', 'torch min / median ms']
    header += [f'{k} min / median ms' for k in names] + [f'{k} / torch' for k in names]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        t = row['times']
        cells = [row['name'], row['shape'], row['mode']]
        cells += [f"{min(t[k]):.1f} / {statistics.median(t[k]):.1f}" for k in ['torch'] + names]
        cells += [f"{min(t[k]) / min(t['torch']):.2f}x" for k in names]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    parser.add_argument('--repeat', type=int, default=10, help='timed rounds per call')
    parser.add_argument('--small', action='store_true',
                        help='shapes 40x smaller in Nq and Nk (a quick check of the tool)')
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f'--repeat {args.repeat} must be at least 1')
    import torch

    from mmsgformer.ops import op_available
    if not op_available():
        raise SystemExit('the mmsgformer C++ extension is not built: nothing to benchmark')
    torch.set_num_threads(args.threads)
    names, rows = measure(SMALL_SHAPES if args.small else SHAPES, args.repeat)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeat} '
          f'alternating rounds per call; vector kernels here: {", ".join(names) or "none"}')
    print(format_table(names, rows))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
