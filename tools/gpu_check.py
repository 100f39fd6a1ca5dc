"""One prepared GPU run: build the CUDA op, run the GPU tests, benchmark, write a report.

Run from the repository root on a GPU machine (a recent torch with CUDA, nvcc, numpy, pytest
and usually timm; no OpenMMLab codebase and no network)::

    bash tools/gpu_wheels.sh .whl                          # beforehand, where pip reaches PyPI
    python tools/gpu_check.py --wheels .whl --out gpu_report

    python tools/gpu_check.py --dry-run --out /tmp/gpu_dry  # on a CPU machine, in seconds

Stages (each one runs even when an earlier one failed, under its own timeout and within the
``--budget``; the report is rewritten after every stage, so a run killed from outside still leaves
one):

1. ``wheels``: ``pip install --no-index --no-deps --target`` of the wheels in ``--wheels DIR``
   whose distributions are not installed yet (mmengine and its pure-Python needs).
2. ``build``: ``python setup.py build_ext --inplace`` with ``FORCE_CUDA=1``, the local GPUs'
   ``TORCH_CUDA_ARCH_LIST`` and a detected ``CUDA_HOME`` (no pip, no dependency resolution),
   timed; then one CUDA call of the op is compared with the reference.
3. ``tests``: pytest of ``tests/test_op_devices.py`` (every op test on cpu and cuda) and
   ``tests/test_backbone_cuda.py`` (CUDA vs CPU in float64, autocast, inductor).
4. ``memcheck``: the tests named ``memcheck_subset`` and the tiny backbone at 224 under
   ``compute-sanitizer --tool memcheck`` (CUDA caching allocator off), where the tool runs.
5. ``benchmark``: SGFormer-S/M/B against Swin-T/S/B (mmpretrain's when importable, else
   timm's, else none) at 224 (batch 128, inference), 800x1344 (batch 2) and 512x512 (batch
   4; backbone forward + backward), float32 and bfloat16 autocast: median of CUDA-event timings after
   warm-up, peak CUDA memory, speed relative to Swin-T; then ``torch.profiler`` over three
   float32 training steps of SGFormer-S and Swin-T at 800x1344: GPU kernels per step, the
   time they keep the GPU busy against the wall time (a low share: the GPU waits for the
   host), the top operators (in ``bench.log``).

``report.md`` and ``report.json`` go to ``--out``, with one log per stage; the markdown is
printed at the end. ``--dry-run`` (or no GPU) reports every CUDA part as "skipped: no GPU" and
runs the benchmark code on the CPU with tiny models and inputs, so the script is exercised by the
CPU test suite (``tests/test_gpu_check.py``).
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
STAGES = ('wheels', 'build', 'tests', 'memcheck', 'benchmark')
# default timeout of each stage (s), and the least time kept back for it by the stages before it
# (the benchmark's 36 cells and profile: its first 24 cells took 168 s on an H200)
STAGE_TIMEOUT = {'wheels': 60, 'build': 420, 'tests': 300, 'memcheck': 180, 'benchmark': 300}
STAGE_RESERVE = {'wheels': 10, 'build': 60, 'tests': 60, 'memcheck': 0, 'benchmark': 200}
NO_GPU = 'skipped: no GPU'
PER_TEST_TIMEOUT = 240  # s, with pytest-timeout when it is installed
OPENMMLAB_CODEBASES = ('mmcv', 'mmdet', 'mmseg', 'mmpretrain')
TEST_FILES = ['tests/test_op_devices.py', 'tests/test_backbone_cuda.py']
# under memcheck: the op tests named memcheck_subset (cuda cases) and the tiny backbone at 224
MEMCHECK_ARGS = ['tests/test_op_devices.py', 'tests/test_backbone_cuda.py', '-k',
                 '(memcheck_subset and cuda) or tiny-224x224']

# benchmark models: name -> (family, arch); Swin archs as in mmdet/mmpretrain/timm
BENCH_MODELS = ['sgformer-s', 'swin-t', 'sgformer-m', 'swin-s', 'sgformer-b', 'swin-b']
DRY_MODELS = ['sgformer-tiny', 'swin-tiny-test']
SGFORMER_TINY = dict(embed_dims=[16, 32, 64, 128], num_heads=[2, 2, 4, 4], depths=[2, 2, 2, 1])
SWIN_ARCHS = {  # embed_dims, depths, num_heads
    't': (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    's': (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    'b': (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    'tiny-test': (16, (1, 1, 1, 1), (1, 1, 2, 2)),
}
TIMM_SWIN = {'t': 'swin_tiny_patch4_window7_224', 's': 'swin_small_patch4_window7_224',
             'b': 'swin_base_patch4_window7_224'}
# (size name, (H, W), batch, mode, warm-up, repeats) on a GPU, and the tiny dry-run analogues
BENCH_SIZES = [('224', (224, 224), 128, 'inference', 5, 20),
               ('800x1344', (800, 1344), 2, 'train', 3, 10),
               ('512x512', (512, 512), 4, 'train', 3, 10)]
DRY_SIZES = [('64x64', (64, 64), 1, 'inference', 1, 1),
             ('64x96', (64, 96), 1, 'train', 1, 1)]
PRECISIONS = ('fp32', 'bf16')
BENCH_TAG = 'GPU_CHECK_BENCH '
# profiled after the table, float32 training: (model, size name) on a GPU and in the dry run
PROFILE_CELLS = [('sgformer-s', '800x1344'), ('swin-t', '800x1344')]
DRY_PROFILE_CELLS = [('sgformer-tiny', '64x96'), ('swin-tiny-test', '64x96')]
PROFILE_STEPS = 3


# ------------------------------------------------------------------------------ helpers

def arch_list(capabilities: Sequence[Tuple[int, int]]) -> str:
    """``TORCH_CUDA_ARCH_LIST`` for the given compute capabilities: ``[(9, 0)]`` -> ``'9.0'``.

    Duplicates are dropped and the list is sorted; an empty input raises ValueError.
    """
    if not capabilities:
        raise ValueError('capabilities is empty: no CUDA device to build for')
    return ';'.join(f'{major}.{minor}' for major, minor in sorted(set(map(tuple, capabilities))))


def find_cuda_home(environ=os.environ) -> Optional[str]:
    """``$CUDA_HOME``/``$CUDA_PATH``, else /usr/local/cuda with an nvcc, else nvcc's prefix."""
    for key in ('CUDA_HOME', 'CUDA_PATH'):
        if environ.get(key) and Path(environ[key], 'bin', 'nvcc').exists():
            return environ[key]
    if Path('/usr/local/cuda/bin/nvcc').exists():
        return '/usr/local/cuda'
    nvcc = shutil.which('nvcc', path=environ.get('PATH'))
    if nvcc:
        return str(Path(os.path.realpath(nvcc)).parents[1])
    return None


def find_tool(name: str, cuda_home: Optional[str]) -> Optional[str]:
    """A CUDA tool on PATH, in ``cuda_home/bin`` or in ``cuda_home/compute-sanitizer``."""
    found = shutil.which(name)
    if found:
        return found
    if cuda_home:
        for sub in ('bin', 'compute-sanitizer'):
            cand = Path(cuda_home, sub, name)
            if cand.exists():
                return str(cand)
    return None


def wheel_distribution(filename: str) -> Tuple[str, str]:
    """``'mmengine-0.10.7-py3-none-any.whl'`` -> ``('mmengine', '0.10.7')`` (PEP 427 names)."""
    if not filename.endswith('.whl') or filename.count('-') < 4:
        raise ValueError(f'{filename!r} is not a wheel file name (NAME-VERSION-...-TAG.whl)')
    name, version = filename.split('-')[:2]
    return name, version


def _findable(module: str) -> bool:
    """Whether ``module`` can be found on ``sys.path`` (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _canonical(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def installed_version(name: str) -> Optional[str]:
    """Version of the installed distribution ``name`` (on ``sys.path``), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.metadata.version(_canonical(name))
        except importlib.metadata.PackageNotFoundError:
            return None


def parse_junit(path: Path) -> dict:
    """Counts and failures of a pytest ``--junitxml`` file.

    Returns ``{'tests', 'passed', 'failed', 'errors', 'skipped', 'failures': [{'test',
    'message'}], 'skips': {reason: count}}``.
    """
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    out = {'tests': 0, 'passed': 0, 'failed': 0, 'errors': 0, 'skipped': 0, 'failures': [],
           'skips': {}}
    for suite in suites:
        for case in suite.iter('testcase'):
            out['tests'] += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            failure = case.find('failure')
            error = case.find('error')
            skipped = case.find('skipped')
            if failure is not None or error is not None:
                node = failure if failure is not None else error
                out['failed' if failure is not None else 'errors'] += 1
                message = (node.get('message') or node.text or '').strip()
                out['failures'].append({'test': name, 'message': message[:400]})
            elif skipped is not None:
                out['skipped'] += 1
                reason = (skipped.get('message') or '').strip()[:120]
                out['skips'][reason] = out['skips'].get(reason, 0) + 1
            else:
                out['passed'] += 1
    return out


def parse_pytest_log(text: str) -> dict:
    """The same counts as :func:`parse_junit` from ``pytest -v`` lines (``path::test STATUS``).

    Used when pytest was killed before it wrote its XML, or its process died (a segfault: the
    test it was running is then reported as failed, with the fatal error as its message); other
    failure messages are not in these lines. pytest-xdist's lines (``[gw0] [ 5%] PASSED
    path::test``) are read too.
    """
    out = {'tests': 0, 'passed': 0, 'failed': 0, 'errors': 0, 'skipped': 0, 'failures': [],
           'skips': {}, 'from_log': True}
    seen = set()
    statuses = r'(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)'
    found = [(m.start(), m.group(1), m.group(2)) for m in re.finditer(
        r'^(\S+::\S+) ' + statuses + r'\b', text, re.MULTILINE)]
    found += [(m.start(), m.group(2), m.group(1)) for m in re.finditer(
        r'^\[gw\d+\] \[\s*\d+%\] ' + statuses + r' (\S+::\S+)', text, re.MULTILINE)]
    for _, test, status in sorted(found):
        if (test, status) in seen:
            continue
        seen.add((test, status))
        out['tests'] += 1
        if status in ('PASSED', 'XPASS'):
            out['passed'] += 1
        elif status in ('SKIPPED', 'XFAIL'):
            out['skipped'] += 1
        else:
            out['failed' if status == 'FAILED' else 'errors'] += 1
            out['failures'].append({'test': test, 'message': '(see the log)'})
    crash = re.search(r'^(\S+::\S+) Fatal Python error: (.*)$', text, re.MULTILINE)
    if crash and not any(t == crash.group(1) for t, _ in seen):
        out['tests'] += 1
        out['failed'] += 1
        out['failures'].append({'test': crash.group(1),
                                'message': f'the test process died: {crash.group(2).strip()}'})
    return out


def isolating_args() -> List[str]:
    """pytest arguments that run the tests in pytest-xdist worker processes, where installed: a
    test that kills its process (a segfault in a kernel) is then reported as failed and a fresh
    worker runs the rest. Without them the first H200 run lost every test after the one that
    crashed (test_op_devices.py::test_bad_inputs[cpu], torch 2.11)."""
    return ['-n', '2', '--max-worker-restart', '16'] if _findable('xdist') else []


def speed_ratio(row: dict, reference: Optional[dict]) -> Optional[float]:
    """Throughput of ``row`` relative to ``reference`` (``ref seconds / row seconds``)."""
    if not reference or row.get('seconds') is None or reference.get('seconds') is None:
        return None
    return reference['seconds'] / row['seconds']


def _fmt(value: Optional[float], spec: str) -> str:
    return '-' if value is None else format(value, spec)


def benchmark_table(rows: List[dict], reference_model: str = 'swin-t') -> str:
    """The one markdown table: a line per model, per size and precision speed, ratio, memory.

    ``rows``: benchmark cells ``{'model', 'size', 'precision', 'batch', 'mode', 'seconds',
    'peak_mib', 'params_m', 'error'}``; inference cells are shown as img/s, training cells as
    s/step. The ratio is the speed relative to ``reference_model`` (> 1: faster).
    """
    models, sizes = [], []
    cells = {}
    for r in rows:
        if r['model'] not in models:
            models.append(r['model'])
        if r['size'] not in sizes:
            sizes.append(r['size'])
        cells[(r['model'], r['size'], r['precision'])] = r
    head = ['model', 'params (M)']
    for size in sizes:
        some = next(r for r in rows if r['size'] == size)
        infer = some['mode'] == 'inference'
        unit = 'img/s' if infer else 's/step'
        what = f"{size} b{some['batch']} {'inference' if infer else 'fwd+bwd'}"
        for prec in PRECISIONS:
            head.append(f'{what} {prec} {unit} (speed vs {reference_model})')
        head.append(f'{size} peak MiB fp32/bf16')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for model in models:
        params = next((r.get('params_m') for r in rows if r['model'] == model
                       and r.get('params_m') is not None), None)
        line = [model, _fmt(params, '.1f')]
        for size in sizes:
            mems = []
            for prec in PRECISIONS:
                r = cells.get((model, size, prec))
                if r is None:
                    line.append('-')
                    mems.append('-')
                    continue
                if r.get('error'):
                    line.append(f"error: {r['error'][:60]}")
                    mems.append('-')
                    continue
                ratio = speed_ratio(r, cells.get((reference_model, size, prec)))
                if r['mode'] == 'inference':
                    value = _fmt(r['batch'] / r['seconds'], '.0f')
                else:
                    value = _fmt(r['seconds'], '.3f')
                line.append(f"{value} ({_fmt(ratio, '.2f')})")
                mems.append(_fmt(r.get('peak_mib'), '.0f'))
            line.append('/'.join(mems))
        lines.append('| ' + ' | '.join(line) + ' |')
    return '\n'.join(lines)


def profile_table(rows: List[dict]) -> str:
    """Markdown table of the profiled cells: kernels per step and how busy they keep the GPU.
    A busy share well below 1 means the GPU waits for the host (launches, Python)."""
    lines = ['| model | input, batch | kernels / step | GPU busy ms / step | wall ms / step | '
             'busy share |', '|---|---|---|---|---|---|']
    for r in rows:
        if r.get('error'):
            lines.append(f"| {r['model']} | {r['size']}, {r['batch']} | error: "
                         f"{r['error'][:80]} | - | - | - |")
            continue
        lines.append(f"| {r['model']} | {r['size']}, {r['batch']} | "
                     f"{_fmt(r.get('kernels_per_step'), '.0f')} | "
                     f"{_fmt(r.get('device_busy_ms'), '.1f')} | {_fmt(r.get('wall_ms'), '.1f')} | "
                     f"{_fmt(r.get('busy_share'), '.2f')} |")
    return '\n'.join(lines)


def run_command(cmd: List[str], log: Path, timeout: float, env: Optional[dict] = None,
                cwd: Path = REPO) -> dict:
    """Runs ``cmd`` in its own process group, output to ``log``; kills the group on timeout.

    Returns ``{'rc', 'seconds', 'timed_out', 'tail'}`` (``tail``: the log's last 3000 chars).
    """
    start = time.perf_counter()
    with open(log, 'ab') as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(cwd), start_new_session=True)
        except OSError as e:
            return {'rc': None, 'seconds': 0.0, 'timed_out': False, 'tail': f'cannot run: {e}'}
        timed_out = False
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
    seconds = time.perf_counter() - start
    text = log.read_text(errors='replace')
    return {'rc': rc, 'seconds': seconds, 'timed_out': timed_out, 'tail': text[-3000:]}


# ------------------------------------------------------------------------------ the check

class OutOfTime(Exception):
    """A stage has less than 10 s left of the run's budget."""


class Check:
    """State of one run: options, environment facts, stage results; writes the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix='mmsgformer-gpu-check-'))
        self.work.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget
        self.stages: Dict[str, dict] = {}
        self.bench: dict = {'rows': []}
        self.site: Optional[Path] = None
        self.env_info = self._environment()
        self.gpu = self.env_info['cuda_devices'] > 0 and not args.dry_run

    # -------------------------------------------------------------- environment
    def _environment(self) -> dict:
        import torch
        info = {
            'python': platform.python_version(),
            'executable': sys.executable,
            'torch': torch.__version__,
            'torch_cuda': torch.version.cuda,
            'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None,
            'cuda_devices': torch.cuda.device_count() if torch.cuda.is_available() else 0,
            'gpus': [],
            'capabilities': [],
            'dry_run': bool(self.args.dry_run),
            'tf32_matmul': torch.backends.cuda.matmul.allow_tf32,
            'tf32_cudnn': torch.backends.cudnn.allow_tf32,
            'cpu_count': os.cpu_count(),
        }
        for i in range(info['cuda_devices']):
            p = torch.cuda.get_device_properties(i)
            info['gpus'].append(f'{p.name} ({p.total_memory / 2**30:.0f} GiB, '
                                f'sm_{p.major}{p.minor}, {p.multi_processor_count} SMs)')
            info['capabilities'].append((p.major, p.minor))
        info['cuda_home'] = find_cuda_home()
        nvcc = find_tool('nvcc', info['cuda_home'])
        info['nvcc'] = None
        if nvcc:
            try:
                text = subprocess.run([nvcc, '--version'], capture_output=True, text=True,
                                      timeout=30).stdout
                m = re.search(r'release ([\d.]+)', text)
                info['nvcc'] = f"{m.group(1) if m else '?'} ({nvcc})"
            except (OSError, subprocess.SubprocessError) as e:
                info['nvcc'] = f'failed: {e}'
        info['compute_sanitizer'] = find_tool('compute-sanitizer', info['cuda_home'])
        info['codebases'] = {m: _findable(m) for m in OPENMMLAB_CODEBASES}
        for dist in ('timm', 'mmengine', 'numpy', 'pytest'):
            info[dist] = installed_version(dist)
        try:
            info['git'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                                         capture_output=True, text=True,
                                         timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info['git'] = None
        return info

    def child_env(self, **extra: str) -> dict:
        """The environment of the stage subprocesses: the wheel site and the repo first."""
        env = dict(os.environ)
        paths = ([str(self.site)] if self.site else []) + [str(REPO)]
        if env.get('PYTHONPATH'):
            paths.append(env['PYTHONPATH'])
        env['PYTHONPATH'] = os.pathsep.join(paths)
        env['PYTHONUNBUFFERED'] = '1'
        env.update(extra)
        return env

    def timeout_for(self, stage: str) -> float:
        """The stage's timeout, cut so that the later stages keep their reserve."""
        later = STAGES[STAGES.index(stage) + 1:]
        left = self.deadline - time.perf_counter() - sum(STAGE_RESERVE[s] for s in later)
        return min(STAGE_TIMEOUT[stage], left)

    @staticmethod
    def need(timeout: float) -> float:
        """``timeout``, or OutOfTime when less than 10 s are left for the stage's work."""
        if timeout < 10:
            raise OutOfTime
        return timeout

    # -------------------------------------------------------------- stages
    def run(self) -> int:
        steps: Dict[str, Callable[[float], dict]] = {
            'wheels': self.stage_wheels, 'build': self.stage_build, 'tests': self.stage_tests,
            'memcheck': self.stage_memcheck, 'benchmark': self.stage_benchmark}
        for name in STAGES:
            if name in self.args.skip:
                result = {'status': 'skipped: --skip'}
            else:
                t0 = time.perf_counter()
                try:  # each stage returns its own skip reason first, then checks the timeout
                    result = steps[name](self.timeout_for(name))
                except OutOfTime:
                    result = {'status': f'skipped: out of time (budget {self.args.budget:.0f} s)'}
                except Exception as e:  # a broken stage must not stop the later ones
                    result = {'status': 'failed', 'detail': f'{type(e).__name__}: {e}'}
                result.setdefault('seconds', round(time.perf_counter() - t0, 1))
            self.stages[name] = result
            self.write_report()
        markdown = self.write_report()
        print(markdown)
        failed = [n for n, r in self.stages.items() if r['status'] in ('failed', 'timeout')]
        return 1 if failed else 0

    def stage_wheels(self, timeout: float) -> dict:
        if not self.args.wheels:
            return {'status': 'skipped: no --wheels DIR'}
        folder = Path(self.args.wheels)
        wheels = sorted(folder.glob('*.whl'))
        if not wheels:
            return {'status': 'failed', 'detail': f'no *.whl in {folder}'}
        self.need(timeout)
        self.site = self.work / 'site'
        self.site.mkdir(exist_ok=True)
        todo, present = [], []
        for w in wheels:
            name, _ = wheel_distribution(w.name)
            have = installed_version(name)
            if have:
                present.append(f'{name} {have}')
            else:
                todo.append(str(w))
        detail = f"already installed: {', '.join(present) or 'none'}"
        if todo:
            cmd = [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps',
                   '--no-compile', '--no-cache-dir', '--target', str(self.site)] + todo
            res = run_command(cmd, self.out / 'wheels.log', timeout)
            if res['rc'] != 0:
                return {'status': 'timeout' if res['timed_out'] else 'failed',
                        'seconds': round(res['seconds'], 1), 'detail': res['tail'][-800:]}
            detail = f"installed {', '.join(Path(t).name for t in todo)}; " + detail
        sys.path.insert(0, str(self.site))
        importlib.invalidate_caches()
        self.env_info['mmengine'] = installed_version('mmengine')
        probe = run_command([sys.executable, '-c', 'import mmengine.model, mmengine.registry, '
                             'mmengine.logging; import mmsgformer; print("mmsgformer imports")'],
                            self.out / 'wheels.log', 60, env=self.child_env())
        if probe['rc'] != 0:
            return {'status': 'failed', 'detail': detail + '\n' + probe['tail'][-800:]}
        return {'status': 'ok', 'detail': detail + '; mmengine and mmsgformer import'}

    def build_command(self) -> Tuple[List[str], dict]:
        caps = self.env_info['capabilities']
        extra = {'FORCE_CUDA': '1', 'TORCH_CUDA_ARCH_LIST': arch_list(caps) if caps else '9.0'}
        if self.env_info['cuda_home']:
            extra['CUDA_HOME'] = self.env_info['cuda_home']
        cmd = [sys.executable, 'setup.py', '-q', 'build_ext', '--inplace',
               '--build-temp', str(self.work / 'build')]
        return cmd, extra

    def stage_build(self, timeout: float) -> dict:
        cmd, extra = self.build_command()
        shown = ' '.join(f'{k}={v}' for k, v in extra.items()) + ' ' + ' '.join(cmd[1:])
        if not self.gpu:
            return {'status': NO_GPU, 'command': f'python {shown}'}
        if not self.env_info['nvcc']:
            return {'status': 'failed', 'detail': 'nvcc not found (set CUDA_HOME)'}
        res = run_command(cmd, self.out / 'build.log', self.need(timeout),
                          env=self.child_env(**extra))
        result = {'command': f'python {shown}', 'build_seconds': round(res['seconds'], 1)}
        if res['rc'] != 0:
            result.update(status='timeout' if res['timed_out'] else 'failed',
                          detail=res['tail'][-1500:])
            return result
        probe = run_command([sys.executable, str(Path(__file__).resolve()), '--probe-op'],
                            self.out / 'build.log', 120, env=self.child_env())
        ok = probe['rc'] == 0 and 'PROBE OK' in probe['tail']
        line = next((ln for ln in probe['tail'].splitlines()[::-1] if 'PROBE' in ln), '')
        result.update(status='ok' if ok else 'failed',
                      detail=f"built in {res['seconds']:.0f} s; {line or probe['tail'][-600:]}")
        return result

    def pytest_stage(self, name: str, args: List[str], timeout: float, prefix: List[str] = (),
                     isolate: bool = False, **env_extra: str) -> dict:
        junit = self.work / f'junit-{name}.xml'
        if junit.exists():
            junit.unlink()
        # -v: one line per test in the log, so a run cut by the timeout still shows its results
        cmd = list(prefix) + [sys.executable, '-m', 'pytest', '-v', '-p', 'no:cacheprovider',
                              '-rfEs', f'--junitxml={junit}'] + (
                                  isolating_args() if isolate else []) + args
        if _findable('pytest_timeout'):
            cmd[len(prefix) + 3:len(prefix) + 3] = ['--timeout', str(PER_TEST_TIMEOUT)]
        log = self.out / f'{name}.log'
        res = run_command(cmd, log, timeout, env=self.child_env(**env_extra))
        result = {'command': ' '.join(cmd), 'rc': res['rc']}
        if junit.exists():
            result['junit'] = parse_junit(junit)
        elif log.exists():  # killed or crashed before pytest wrote the XML: what the log shows
            result['junit'] = parse_pytest_log(log.read_text(errors='replace'))
        if res['timed_out']:
            result['status'] = 'timeout'
        elif res['rc'] == 0:
            result['status'] = 'ok'
        else:
            result['status'] = 'failed'
        j = result.get('junit')
        if j:
            result['detail'] = (f"{j['passed']} passed, {j['failed']} failed, {j['errors']} "
                                f"errors, {j['skipped']} skipped")
        else:
            result['detail'] = res['tail'][-1500:]
        return result

    def stage_tests(self, timeout: float) -> dict:
        if not self.gpu:
            return {'status': NO_GPU, 'command': 'MMSGFORMER_ALL_DEVICES=1 python -m pytest '
                                                 + ' '.join(TEST_FILES)}
        return self.pytest_stage('tests', TEST_FILES, self.need(timeout), isolate=True,
                                 MMSGFORMER_ALL_DEVICES='1')

    def stage_memcheck(self, timeout: float) -> dict:
        tool = self.env_info['compute_sanitizer']
        if not self.gpu:
            return {'status': NO_GPU}
        if not tool:
            return {'status': 'skipped: compute-sanitizer not found'}
        self.need(timeout)
        prefix = [tool, '--tool', 'memcheck', '--error-exitcode', '99']
        # does the sanitizer run here at all (it refuses some virtualized devices)?
        probe = run_command(prefix + [sys.executable, '-c',
                                      'import torch; x = torch.ones(64, device="cuda"); '
                                      'print("SANITIZER PROBE", float((2 * x).sum()))'],
                            self.out / 'memcheck.log', min(120, timeout), env=self.child_env())
        if probe['rc'] != 0 or 'SANITIZER PROBE 128.0' not in probe['tail']:
            lines = [ln for ln in probe['tail'].splitlines() if ln.strip()]
            return {'status': 'skipped: compute-sanitizer does not run here',
                    'detail': '\n'.join(lines[-6:])}
        result = self.pytest_stage('memcheck', MEMCHECK_ARGS,
                                   self.need(timeout - probe['seconds']),
                                   prefix=prefix, PYTORCH_NO_CUDA_MEMORY_CACHING='1')
        log = (self.out / 'memcheck.log').read_text(errors='replace')
        summaries = re.findall(r'ERROR SUMMARY: (\d+) error', log)
        errors = int(summaries[-1]) if summaries else None
        result['sanitizer_errors'] = errors
        result['detail'] = f"{result.get('detail', '')}; sanitizer: " + (
            f'{errors} errors' if errors is not None else 'no ERROR SUMMARY line')
        if errors:
            result['status'] = 'failed'
        return result

    def stage_benchmark(self, timeout: float) -> dict:
        jsonl = self.out / 'bench.jsonl'
        if jsonl.exists():
            jsonl.unlink()
        cmd = [sys.executable, str(Path(__file__).resolve()), '--bench-worker', str(jsonl)]
        if not self.gpu:
            cmd.append('--dry-run')
        res = run_command(cmd, self.out / 'bench.log', self.need(timeout), env=self.child_env())
        rows = []
        if jsonl.exists():
            rows = [json.loads(ln) for ln in jsonl.read_text().splitlines() if ln.strip()]
        meta = next((r for r in rows if r.get('meta')), {})
        cells = [r for r in rows if not r.get('meta') and not r.get('profile')]
        profiles = [r for r in rows if r.get('profile')]
        self.bench = {'rows': cells, 'profiles': profiles,
                      **{k: v for k, v in meta.items() if k != 'meta'}}
        errors = [c for c in cells if c.get('error')]
        status = 'timeout' if res['timed_out'] else ('ok' if res['rc'] == 0 else 'failed')
        detail = f"{len(cells)} cells, {len(errors)} with errors"
        if not self.gpu:
            status = f'{NO_GPU} (ran the benchmark code on the CPU with tiny models)'
            if res['rc'] != 0:
                status = 'failed'
        if res['rc'] != 0:
            detail += '\n' + res['tail'][-1200:]
        return {'status': status, 'detail': detail}

    # -------------------------------------------------------------- report
    def write_report(self) -> str:
        total = time.perf_counter() - self.start
        report = {'environment': self.env_info, 'stages': self.stages,
                  'benchmark': self.bench, 'total_seconds': round(total, 1)}
        (self.out / 'report.json').write_text(json.dumps(report, indent=1, default=str))
        md = self.markdown(total)
        (self.out / 'report.md').write_text(md)
        return md

    def markdown(self, total: float) -> str:
        e = self.env_info
        lines = ['# mmsgformer GPU check' + (' (dry run)' if e['dry_run'] else ''), '']
        gpus = '; '.join(e['gpus']) or 'none visible'
        lines += [f"- GPU: {gpus}",
                  f"- torch {e['torch']} (CUDA {e['torch_cuda']}, cuDNN {e['cudnn']}), "
                  f"Python {e['python']}, nvcc {e['nvcc']}, git {e['git']}",
                  f"- compute-sanitizer: {e['compute_sanitizer']}; timm {e['timm']}; "
                  f"mmengine {e['mmengine']}; OpenMMLab codebases importable: "
                  f"{', '.join(m for m, ok in e['codebases'].items() if ok) or 'none'}",
                  f"- TF32: matmul {e['tf32_matmul']}, cuDNN {e['tf32_cudnn']} (torch defaults)",
                  f"- total {total:.0f} s", '', '| stage | status | seconds | detail |',
                  '|---|---|---|---|']
        for name in STAGES:
            r = self.stages.get(name)
            if r is None:
                lines.append(f'| {name} | not run yet | - | - |')
                continue
            detail = str(r.get('detail', r.get('command', ''))).strip().splitlines()
            short = detail[0][:200] if detail else ''
            lines.append(f"| {name} | {r['status']} | {r.get('seconds', '-')} | "
                         f"{short.replace('|', '/')} |")
        for name in ('tests', 'memcheck'):
            r = self.stages.get(name) or {}
            fails = (r.get('junit') or {}).get('failures') or []
            if fails:
                lines += ['', f'## {name}: failures', '']
                lines += [f"- `{f['test']}`: {f['message'][:300]}" for f in fails[:30]]
        for name in ('build', 'wheels', 'memcheck', 'benchmark'):
            r = self.stages.get(name) or {}
            if r.get('status') in ('failed', 'timeout') and r.get('detail'):
                lines += ['', f'## {name}: output', '', '```', str(r['detail'])[-1500:], '```']
        lines += ['', '## Benchmark', '']
        b = self.bench
        if b.get('rows'):
            lines.append(f"Device: {b.get('device')}; Swin: {b.get('swin_source')}; SG-Former "
                         f"aggregation: {b.get('sga_impl')}. {b.get('note', '')}")
            lines += ['', benchmark_table(b['rows'], b.get('reference', 'swin-t')), '']
            lines.append(b.get('legend', ''))
        else:
            lines.append('no benchmark results')
        if b.get('profiles'):
            lines += ['', f'## Profile ({PROFILE_STEPS} float32 steps each; the top operators '
                          'are in bench.log)', '', profile_table(b['profiles'])]
        return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------ subprocesses

def probe_op() -> int:
    """One CUDA call of the compiled op (forward + backward) against the reference."""
    import torch

    from mmsgformer.ops import op_available, segment_layout, sg_aggregate, sg_aggregate_reference
    if not op_available():
        print('PROBE FAILED: mmsgformer._C is not built')
        return 1
    if not torch._C._dispatch_has_kernel_for_dispatch_key('mmsgformer::sg_aggregate', 'CUDA'):
        print('PROBE FAILED: the op has no CUDA kernel (built without CUDA)')
        return 1
    layout = segment_layout(3136, 8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3136, 64, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    order = torch.argsort(torch.rand(2, 3136, generator=gen), dim=1).cuda()
    w = torch.rand(sum(layout.group_sizes), dtype=torch.float64).cuda().requires_grad_()
    b = torch.rand(layout.num_segments, dtype=torch.float64).cuda().requires_grad_()
    out = sg_aggregate(x, order, w, b, layout, impl='op')
    ref = sg_aggregate_reference(x, order, w, b, layout)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), g)
    ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    err = max([(out - ref).abs().max().item()] +
              [(a - e).abs().max().item() for a, e in zip(grads, ref_grads)])
    ok = err <= 1e-12
    print(f"PROBE {'OK' if ok else 'FAILED'}: CUDA op vs float64 reference, max error {err:.2e}")
    return 0 if ok else 1


def swin_source() -> Optional[str]:
    """Where Swin comes from: ``'mmpretrain'`` when it imports, else ``'timm'``, else None."""
    try:
        import mmpretrain.models  # noqa: F401
        return 'mmpretrain'
    except Exception:  # ImportError, or an mmcv version assert of a codebase it imports
        pass
    try:
        import timm  # noqa: F401
        return 'timm'
    except ImportError:
        return None


def build_bench_model(name: str, dense: bool, img_hw: Tuple[int, int], source: Optional[str]):
    """``dense``: the backbone with its four outputs; else backbone + GAP + Linear(C, 1000).

    SG-Former is this package's; Swin is mmpretrain's (the same network as mmdet's) or timm's
    ``swin_*_patch4_window7_224``, built for ``img_hw``. Stochastic depth is off everywhere.
    """
    import torch
    import torch.nn as nn
    family, arch = name.split('-', 1)
    arch = {'tiny': 'tiny', 'tiny-test': 'tiny-test'}.get(arch, arch)
    if family == 'sgformer':
        from mmsgformer.models import SGFormer
        tiny = arch == 'tiny'
        backbone = SGFormer(arch=dict(SGFORMER_TINY) if tiny else arch,
                            mlp_ratio=2 if tiny else 4,
                            out_indices=(0, 1, 2, 3) if dense else (3, ))
    elif family == 'swin' and source == 'timm':
        import timm
        dims, depths, heads = SWIN_ARCHS[arch]
        kwargs = dict(pretrained=False, img_size=img_hw, drop_path_rate=0.0)
        if arch == 'tiny-test':
            model_name = 'swin_tiny_patch4_window7_224'
            kwargs.update(embed_dim=dims, depths=depths, num_heads=heads)
        else:
            model_name = TIMM_SWIN[arch]
        if not dense:
            return timm.create_model(model_name, num_classes=1000, **kwargs)
        return timm.create_model(model_name, features_only=True, out_indices=(0, 1, 2, 3),
                                 **kwargs)
    elif family == 'swin' and source == 'mmpretrain':
        from mmpretrain.models import SwinTransformer
        dims, depths, heads = SWIN_ARCHS[arch]
        backbone = SwinTransformer(arch=dict(embed_dims=dims, depths=list(depths),
                                             num_heads=list(heads)),
                                   img_size=img_hw, drop_path_rate=0.0, pad_small_map=True,
                                   out_indices=(0, 1, 2, 3) if dense else (3, ))
    else:
        raise ValueError(f'cannot build {name!r}: no Swin implementation (source={source!r})')
    if dense:
        return backbone

    class Classifier(nn.Module):
        """backbone -> last stage (B, C, H, W) -> mean over H, W -> Linear(C, 1000)."""

        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone
            with torch.no_grad():
                channels = backbone(torch.zeros(1, 3, *img_hw))[-1].shape[1]
            self.head = nn.Linear(channels, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x)[-1].mean((2, 3)))

    return Classifier(backbone)


def bench_worker(jsonl: Path, dry_run: bool) -> int:
    """Measures every benchmark cell and appends one JSON line per cell to ``jsonl``."""
    import torch

    from mmsgformer.ops import op_available
    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device('cuda' if cuda else 'cpu')
    source = swin_source()
    models = DRY_MODELS if not cuda else BENCH_MODELS
    sizes = DRY_SIZES if not cuda else BENCH_SIZES
    has_cuda_op = op_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        'mmsgformer::sg_aggregate', 'CUDA')
    sga = ('op (CUDA kernel)' if has_cuda_op else 'reference (no CUDA op built)') if cuda else (
        'op (CPU kernel)' if op_available() else 'reference')
    meta = {
        'meta': True,
        'device': torch.cuda.get_device_name(0) if cuda else 'cpu (dry run: tiny models, '
                                                             'timings not meaningful)',
        'swin_source': {'mmpretrain': 'mmpretrain (SwinTransformer built for the input size)',
                        'timm': 'timm (swin_*_patch4_window7_224 built for the input size)',
                        None: 'none: neither mmpretrain nor timm importable, Swin skipped'
                        }[source],
        'sga_impl': sga,
        'reference': 'swin-tiny-test' if not cuda else 'swin-t',
        'note': 'Stochastic depth off; eval mode for inference, train mode for fwd+bwd.',
        'legend': ('224: classifier (backbone, average pool, Linear(C, 1000)), torch.no_grad, '
                   'images per second. 800x1344, 512x512: backbone with all four outputs, '
                   'forward + backward of the sum of the output means, seconds per step. bf16: '
                   'torch.autocast(bfloat16). Times: median over the repeats after warm-up '
                   '(CUDA events). In brackets: speed relative to Swin-T (> 1: faster). Peak: '
                   'torch.cuda.max_memory_allocated during the timed runs (weights included).'),
    }
    with open(jsonl, 'a') as f:
        f.write(json.dumps(meta) + '\n')
    for size, hw, batch, mode, warmup, repeats in sizes:
        for name in models:
            if name.startswith('swin') and source is None:
                continue
            model = None
            try:
                torch.manual_seed(0)
                model = build_bench_model(name, dense=mode == 'train', img_hw=hw, source=source)
                model.to(device)
                model.train(mode == 'train')  # (mmpretrain's train() returns None)
                params = sum(p.numel() for p in model.parameters()) / 1e6
            except Exception as e:  # report and go on with the next model
                for prec in PRECISIONS:
                    _emit(jsonl, dict(model=name, size=size, batch=batch, mode=mode,
                                      precision=prec, error=f'build: {type(e).__name__}: {e}'))
                continue
            for prec in PRECISIONS:
                cell = dict(model=name, size=size, batch=batch, mode=mode, precision=prec,
                            params_m=round(params, 2), hw=list(hw))
                try:
                    cell.update(_measure(model, hw, batch, mode, prec, device, warmup, repeats))
                except Exception as e:
                    cell['error'] = f'{type(e).__name__}: {str(e)[:300]}'
                _emit(jsonl, cell)
                if cuda:
                    torch.cuda.empty_cache()
            del model
            if cuda:
                torch.cuda.empty_cache()
    for name, size in DRY_PROFILE_CELLS if not cuda else PROFILE_CELLS:
        if name.startswith('swin') and source is None:
            continue
        _, hw, batch, mode, warmup, _ = next(spec for spec in sizes if spec[0] == size)
        cell = dict(profile=True, model=name, size=size, batch=batch, precision='fp32')
        try:
            torch.manual_seed(0)
            model = build_bench_model(name, dense=True, img_hw=hw, source=source).to(device)
            model.train(mode == 'train')
            cell.update(_profile(model, hw, batch, mode, device, warmup))
            del model
        except Exception as e:
            cell['error'] = f'{type(e).__name__}: {str(e)[:300]}'
        table = cell.pop('table', '')
        _emit(jsonl, cell)
        print(f'# profile of {name} {mode} {size} batch {batch} fp32, {PROFILE_STEPS} steps\n'
              f'{table}', flush=True)
        if cuda:
            torch.cuda.empty_cache()
    return 0


def _emit(jsonl: Path, cell: dict) -> None:
    with open(jsonl, 'a') as f:
        f.write(json.dumps(cell) + '\n')
    print(BENCH_TAG + json.dumps(cell), flush=True)


def _step(model, x, mode: str, precision: str) -> Callable[[], None]:
    """One step of a cell: a no-grad forward (inference), or forward + backward of the sum of
    the output means (train); under bf16 autocast for ``precision == 'bf16'``."""
    import torch
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')

    def step() -> None:
        if mode == 'inference':
            with torch.no_grad(), amp:
                model(x)
        else:
            model.zero_grad(set_to_none=True)
            with amp:
                outs = model(x)
                loss = sum(o.float().mean() for o in outs)
            loss.backward()
    return step


def _measure(model, hw, batch: int, mode: str, precision: str, device, warmup: int,
             repeats: int) -> dict:
    """Median seconds per call and peak memory of one cell (see the report legend)."""
    import torch
    cuda = device.type == 'cuda'
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, *hw, device=device, generator=gen)
    step = _step(model, x, mode, precision)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    out = {'seconds': statistics.median(times), 'times': [round(t, 5) for t in times]}
    out['peak_mib'] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return out


def _profile(model, hw, batch: int, mode: str, device, warmup: int) -> dict:
    """Where ``PROFILE_STEPS`` steps of a cell go (``torch.profiler``): GPU kernels launched per
    step, the time they keep the GPU busy against the step's wall time (a low share: the GPU
    waits for the host), and the top operators as a table (``'table'``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == 'cuda'
    step = _step(model, torch.randn(batch, 3, *hw, device=device), mode, 'fp32')
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(PROFILE_STEPS):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / PROFILE_STEPS
    kernels = [e for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.time_range.end - e.time_range.start for e in kernels) / 1e6 / PROFILE_STEPS
    averages = prof.key_averages()
    table = ''
    for key in (('self_device_time_total', 'self_cuda_time_total') if cuda
                else ('self_cpu_time_total', )):
        try:
            table = averages.table(sort_by=key, row_limit=15)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    return {'kernels_per_step': len(kernels) / PROFILE_STEPS, 'wall_ms': wall * 1e3,
            'device_busy_ms': busy * 1e3 if cuda else None,
            'busy_share': busy / wall if cuda else None, 'table': table}


# ------------------------------------------------------------------------------ entry point

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='gpu_report', help='folder of report.md, report.json, logs')
    p.add_argument('--wheels', help='folder of wheels to install first (tools/gpu_wheels.sh)')
    p.add_argument('--dry-run', action='store_true',
                   help='CPU only: skip every CUDA part, benchmark tiny models on the CPU')
    p.add_argument('--skip', nargs='*', default=[], choices=STAGES, help='stages to skip')
    p.add_argument('--budget', type=float, default=540.,
                   help='seconds for the whole run; stage timeouts are cut to fit (default 540)')
    p.add_argument('--work', help='scratch folder (wheel site, build temp, junit); default: a '
                                  'new temporary folder')
    p.add_argument('--probe-op', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--bench-worker', metavar='JSONL', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe_op:
        return probe_op()
    if args.bench_worker:
        return bench_worker(Path(args.bench_worker), args.dry_run)
    if args.budget <= 0:
        raise ValueError(f'--budget={args.budget} must be > 0 seconds')
    return Check(args).run()


if __name__ == '__main__':
    sys.exit(main())
