"""tools/setup_env.sh stops with a message naming the failed step; its ``--torch`` option."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _path_without(tmp_path: Path, missing: str) -> str:
    """A PATH holding the basic tools set-up needs, minus ``missing``."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for tool in ('bash', 'dirname', 'date', 'cat', 'mkdir', 'ls', 'head', 'sed', 'grep', 'tr',
                 'cut', 'nproc'):
        found = shutil.which(tool)
        if found and tool != missing:
            (bin_dir / tool).symlink_to(found)
    # The real interpreter (pyenv shims are scripts that need a full PATH).
    real_python = os.path.realpath(sys.executable)
    for name in ('python3.11', 'python3'):
        (bin_dir / name).symlink_to(real_python)
    return str(bin_dir)


def test_missing_compiler_names_the_step(tmp_path):
    env = dict(os.environ, PATH=_path_without(tmp_path, 'g++'),
               MMSGFORMER_CACHE=str(tmp_path / 'cache'))
    env.pop('PYTHON', None)
    proc = subprocess.run(['bash', str(REPO / 'tools' / 'setup_env.sh')], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert 'FAILED at step "check tools"' in proc.stderr
    assert 'g++' in proc.stderr
    # It stopped before creating anything.
    assert not (tmp_path / 'cache').exists()


def test_wrong_python_names_the_step(tmp_path):
    fake = tmp_path / 'python2'
    fake.write_text('#!/bin/sh\nexit 1\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), MMSGFORMER_CACHE=str(tmp_path / 'cache'))
    proc = subprocess.run(['bash', str(REPO / 'tools' / 'setup_env.sh')], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert 'FAILED at step "check tools"' in proc.stderr
    assert 'Python 3.11 is required' in proc.stderr


def _setup(tmp_path, *args, timeout=60):
    env = dict(os.environ, MMSGFORMER_CACHE=str(tmp_path / 'cache'))
    env.pop('MMSGFORMER_TORCH_VERSION', None)
    env.pop('MMSGFORMER_VENV', None)
    return subprocess.run(['bash', str(REPO / 'tools' / 'setup_env.sh'), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_torch_version_outside_the_supported_range(tmp_path):
    proc = _setup(tmp_path, '--torch', '1.13.1')
    assert proc.returncode != 0
    assert 'torch 1.13.1 is not supported: mmsgformer needs torch >= 2.1' in proc.stderr
    proc = _setup(tmp_path, '--torch', 'latest')
    assert "--torch 'latest' is not a release like 2.1.2" in proc.stderr
    assert not (tmp_path / 'cache').exists()


def _index_lists_torch() -> bool:
    proc = subprocess.run([sys.executable, '-m', 'pip', 'index', 'versions', 'torch'],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode == 0 and 'Available versions:' in proc.stdout


def test_torch_version_without_wheel_names_the_ones_that_exist(tmp_path):
    if not _index_lists_torch():
        pytest.skip('the package index cannot be listed here (offline)')
    proc = _setup(tmp_path, '--torch', '2.99.0')
    assert proc.returncode != 0
    assert 'FAILED at step "check torch 2.99.0"' in proc.stderr
    assert 'torch 2.99.0 has no wheel for Python 3.11 on this platform; versions with one:' \
        in proc.stderr
    assert ' 2.1.2,' in proc.stderr and ' 2.14.1,' in proc.stderr
    assert not (tmp_path / 'cache').exists()  # stopped before creating the venv


def test_print_constraints_for_another_torch(tmp_path):
    proc = _setup(tmp_path, '--torch', '2.1.2', '--print-constraints')
    assert proc.returncode == 0, proc.stderr
    pins = proc.stdout.split()
    assert {'torch==2.1.2', 'torchvision==0.16.2', 'numpy==1.26.4', 'mmcv==2.1.0',
            'mmdet==3.3.0'} <= set(pins)
    assert 'torch==2.14.1' not in pins and 'torchvision==0.29.1' not in pins
    main = _setup(tmp_path, '--print-constraints').stdout.split()
    assert {'torch==2.14.1', 'torchvision==0.29.1', 'mmcv==2.1.0'} <= set(main)
    # an untested torch gets its matching torchvision and keeps the other pins
    other = _setup(tmp_path, '--torch', '2.4.1', '--print-constraints')
    assert {'torch==2.4.1', 'torchvision==0.19.1', 'mmcv==2.1.0'} <= set(other.stdout.split())
    assert 'not one of the tested sets' in other.stderr
    assert not (tmp_path / 'cache').exists()
