"""SG-Former (and Focal Transformer) backbones, registered in mmengine's root MODELS registry."""
from .focal_transformer import FocalTransformer
from .sgformer import SGFormer
from .significance import SignificanceRecord

__all__ = ['SGFormer', 'SignificanceRecord', 'FocalTransformer']
