"""The CUDA kernel of the op compiles with nvcc against the installed torch's headers.

No GPU is needed: every ``mmsgformer/ops/csrc/cuda/*.cu`` is compiled (``nvcc -c``, sm_80) with
the flags torch's ``CUDAExtension`` uses and torch's include paths. This takes minutes, so a
success is cached in ``~/.cache/mmsgformer/cuda-compile/`` (or ``$MMSGFORMER_CACHE/cuda-compile``)
under a hash of the sources, the flags, the nvcc version and the torch version: unchanged
sources are not recompiled. Skipped only when no nvcc is found.
"""
import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

CSRC = Path(__file__).resolve().parents[1] / 'mmsgformer' / 'ops' / 'csrc'
CACHE = Path(os.environ.get('MMSGFORMER_CACHE',
                            Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache'))
                            / 'mmsgformer')) / 'cuda-compile'


def find_nvcc():
    """nvcc from $CUDA_HOME, /usr/local/cuda or PATH, with the CUDA home that owns it."""
    candidates = []
    if os.environ.get('CUDA_HOME'):
        candidates.append(Path(os.environ['CUDA_HOME']))
    candidates.append(Path('/usr/local/cuda'))
    for home in candidates:
        if (home / 'bin' / 'nvcc').exists():
            return str(home / 'bin' / 'nvcc'), home
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        return None, None
    return nvcc, Path(os.path.realpath(nvcc)).parents[1]


def nvcc_command(nvcc, cuda_home, source, obj):
    includes = include_paths(device_type='cpu') + [
        str(cuda_home / 'include'), sysconfig.get_paths()['include'], str(CSRC)]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = COMMON_NVCC_FLAGS + [
        '-std=c++20', '-O3', '-Xcompiler', '-fPIC', '-DWITH_CUDA',
        '-DTORCH_API_INCLUDE_EXTENSION_H', '-DTORCH_EXTENSION_NAME=_C',
        f'-D_GLIBCXX_USE_CXX11_ABI={abi}', '-gencode=arch=compute_80,code=sm_80']
    return [nvcc, '-c', str(source), '-o', str(obj)] + [f'-I{p}' for p in includes] + flags


def cache_key(nvcc, commands):
    h = hashlib.sha256()
    for path in sorted(CSRC.rglob('*')):
        if path.suffix in ('.h', '.cuh', '.cu') and path.is_file():
            h.update(str(path.relative_to(CSRC)).encode())
            h.update(path.read_bytes())
    h.update(torch.__version__.encode())
    version = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
    h.update(version.encode())
    for cmd in commands:  # flags and include paths (not the temporary object path)
        h.update(' '.join(cmd[5:]).encode())
    return h.hexdigest()[:24]


@pytest.mark.slow
def test_cuda_sources_compile_with_nvcc():
    nvcc, cuda_home = find_nvcc()
    if nvcc is None:
        pytest.skip('nvcc not found (set CUDA_HOME): cannot check that the CUDA kernel compiles')
    sources = sorted((CSRC / 'cuda').glob('*.cu'))
    assert sources, f'no CUDA sources in {CSRC / "cuda"}'
    with tempfile.TemporaryDirectory() as tmp:
        commands = [nvcc_command(nvcc, cuda_home, s, Path(tmp) / (s.stem + '.o'))
                    for s in sources]
        stamp = CACHE / f'{cache_key(nvcc, commands)}.ok'
        if stamp.exists():
            return  # these exact sources already compiled with this torch and nvcc
        for source, cmd in zip(sources, commands):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            assert proc.returncode == 0, (
                f'nvcc failed on {source.name}:\n{" ".join(cmd)}\n{proc.stderr[-4000:]}')
            obj = Path(cmd[4]).read_bytes()
            # the object holds the device code of both kernels and their registration
            for symbol in (b'forward_kernel', b'backward_kernel', b'weight_grad_kernel',
                           b'sg_aggregate_backward_cuda'):
                assert symbol in obj, f'{symbol!r} missing from {source.name}.o'
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f'{torch.__version__}\n' + '\n'.join(s.name for s in sources) + '\n')
