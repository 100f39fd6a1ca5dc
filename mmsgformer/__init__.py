"""mmsgformer: SG-Former and Focal Transformer backbones for mmpretrain, mmdet and mmsegmentation.

Importing the package registers the backbones in mmengine's root ``MODELS`` registry (so configs of
every OpenMMLab codebase can build them) and allow-lists the classes that OpenMMLab and official
SG-Former checkpoints pickle, so torch's weights-only loading accepts them. It does not import
mmdet, mmsegmentation or mmpretrain.
"""
from .safe_globals import register_safe_globals

register_safe_globals()

from .models import *  # noqa: E402,F401,F403  (registers the backbones)

__version__ = '0.1.0'
