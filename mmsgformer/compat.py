"""What the installed torch provides, and the version check run by ``import mmsgformer``.

mmsgformer supports torch 2.1 to 2.14. Newer torch has APIs that 2.1 lacks; each is used where
present and replaced by an equivalent where not (no feature is lost on new torch):

* ``torch.library.register_fake`` (2.4): a Python ``Meta`` kernel (``Library.impl``);
* ``torch.library.register_autograd`` (2.4): a Python ``Autograd`` kernel that runs a
  ``torch.autograd.Function``;
* ``torch.library.opcheck`` (2.4): none (its tests skip, naming the torch version);
* ``torch.serialization.add_safe_globals`` (2.4): a restricted unpickler (``safe_globals.py``);
* ``torch.compiler.is_compiling`` (2.3): ``torch._utils.is_compiling``.

Import-light: imports torch and the standard library only (no mmcv/mmdet/mmseg/mmpretrain).
"""
import os
import re
from importlib import metadata
from typing import List, Optional, Tuple

import torch

from .version import SUPPORTED, requirement

__all__ = ['parse_version', 'TORCH_VERSION', 'HAS_REGISTER_FAKE', 'HAS_REGISTER_AUTOGRAD',
           'HAS_OPCHECK', 'HAS_SAFE_GLOBALS', 'is_compiling', 'version_problems',
           'check_versions', 'SKIP_CHECK_ENV']

SKIP_CHECK_ENV = 'MMSGFORMER_SKIP_VERSION_CHECK'


def parse_version(version: str) -> Tuple[int, ...]:
    """The release numbers a version string starts with.

    ``'2.1.2+cu121'`` -> ``(2, 1, 2)``; pre-releases count as their release
    (``'2.0.0rc4'`` -> ``(2, 0, 0)``, ``'2.1.0a0+git1234'`` -> ``(2, 1, 0)``), so source builds
    of a supported torch pass the check.
    """
    match = re.match(r'\s*v?(\d+(?:\.\d+)*)', version)
    if match is None:
        raise ValueError(f'version {version!r} does not start with release numbers like 2.1.0')
    return tuple(int(part) for part in match.group(1).split('.'))


def _key(version: Tuple[int, ...]) -> Tuple[int, ...]:
    return version + (0,) * (4 - len(version))


def in_range(version: str, low: str, high: Optional[str]) -> bool:
    """``low <= version < high`` (``high=None``: no upper bound), release numbers only."""
    v = _key(parse_version(version))
    return _key(parse_version(low)) <= v and (high is None or v < _key(parse_version(high)))


TORCH_VERSION: Tuple[int, ...] = parse_version(torch.__version__)[:3]

# Which torch APIs exist (see the table above).
HAS_REGISTER_FAKE = hasattr(torch.library, 'register_fake')
HAS_REGISTER_AUTOGRAD = hasattr(torch.library, 'register_autograd')
HAS_OPCHECK = hasattr(torch.library, 'opcheck')
HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'add_safe_globals')

# An alias, not a wrapper: torch.compile recognizes these functions and traces them as True.
is_compiling = getattr(getattr(torch, 'compiler', None), 'is_compiling', None)
if is_compiling is None:  # torch < 2.3
    is_compiling = torch._utils.is_compiling


def _installed(package: str) -> Optional[Tuple[str, str]]:
    """``(distribution, version)`` of an installed package, without importing it, or None."""
    if package == 'torch':
        return 'torch', torch.__version__
    names = ('mmcv', 'mmcv-lite', 'mmcv-full') if package == 'mmcv' else (package,)
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_problems() -> List[str]:
    """One line per installed package outside mmsgformer's range (``version.SUPPORTED``).

    Packages that are not installed are not a problem here: mmsgformer itself needs only torch
    and mmengine, and each codebase says so when a config needs it.
    """
    problems = []
    for package, (low, high) in SUPPORTED.items():
        found = _installed(package)
        if found is None:
            continue
        dist, version = found
        if dist == 'mmcv-full' or not in_range(version, low, high):
            problems.append(f'{dist} {version} is installed but mmsgformer needs '
                            f'{requirement(package)}')
    return problems


def check_versions(environ=os.environ) -> None:
    """Raise ImportError naming each package whose installed version is outside its range.

    Skipped when the environment variable ``MMSGFORMER_SKIP_VERSION_CHECK=1`` is set.
    """
    if environ.get(SKIP_CHECK_ENV, '0') not in ('', '0'):
        return
    problems = version_problems()
    if problems:
        raise ImportError(
            'mmsgformer: ' + '; '.join(problems) + '. Install versions in these ranges '
            '(tools/setup_env.sh installs the tested set of requirements/constraints.txt), or set '
            f'{SKIP_CHECK_ENV}=1 to import anyway.')
