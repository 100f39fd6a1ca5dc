"""tools/setup_env.sh stops with a message naming the failed step."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _path_without(tmp_path: Path, missing: str) -> str:
    """A PATH holding the basic tools set-up needs, minus ``missing``."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for tool in ('bash', 'dirname', 'date', 'cat', 'mkdir', 'ls', 'head'):
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
