"""mmsgformer: SG-Former and Focal Transformer backbones for mmpretrain, mmdet and mmsegmentation.

Importing the package checks that the installed torch, mmengine, mmcv, mmdet, mmsegmentation and
mmpretrain are in mmsgformer's ranges (``mmsgformer/version.py``; read from package metadata, none
of them is imported), registers the backbones in mmengine's root ``MODELS`` registry (so configs of
every OpenMMLab codebase can build them) and allow-lists the classes that OpenMMLab and official
SG-Former checkpoints pickle, so torch's weights-only loading accepts them. It does not import
mmcv, mmdet, mmsegmentation or mmpretrain.
"""
from .compat import check_versions
from .version import __version__  # noqa: F401

check_versions()

from .safe_globals import register_safe_globals  # noqa: E402

register_safe_globals()

from .models import *  # noqa: E402,F401,F403  (registers the backbones)
