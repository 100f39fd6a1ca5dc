"""mmsgformer's version and the version ranges of the packages it works with.

This file is the one place for the *ranges*: ``setup.py`` reads it (without importing the package)
for ``install_requires`` and the ``mim`` extra, and :mod:`mmsgformer.compat` checks the installed
versions against it on ``import mmsgformer``. The exact versions tested together live in
``requirements/constraints.txt`` (used by ``tools/setup_env.sh``).

Standard library only: setup.py executes this file before anything is installed.
"""
from typing import Dict, Optional, Tuple

__version__ = '0.1.0'

# package -> (lowest supported, first unsupported or None). Lower bounds: torch 2.1 is the oldest
# with ``scaled_dot_product_attention(scale=...)``; mmengine 0.8 is mmpretrain 1.x's minimum.
# Upper bounds: mmdet 3.x and mmsegmentation 1.x assert mmcv < 2.2.0; mmdet 3.4, mmseg 1.3 and
# mmpretrain 1.3 are not released/tested.
SUPPORTED: Dict[str, Tuple[str, Optional[str]]] = {
    'torch': ('2.1.0', None),
    'mmengine': ('0.8.0', '1.0.0'),
    'mmcv': ('2.0.0', '2.2.0'),
    'mmdet': ('3.0.0', '3.4.0'),
    'mmsegmentation': ('1.0.0', '1.3.0'),
    'mmpretrain': ('1.0.0', '1.3.0'),
}


def requirement(package: str) -> str:
    """The pip requirement string of ``package``, e.g. ``'mmcv>=2.0.0,<2.2.0'``."""
    low, high = SUPPORTED[package]
    return f'{package}>={low}' + (f',<{high}' if high else '')
