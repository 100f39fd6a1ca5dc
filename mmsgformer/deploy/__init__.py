"""Deployment helpers: building a config's model for inference/export (``model``) and the ONNX
translation of ``sg_aggregate`` (``onnx``). Importing this needs only torch; onnx, onnxscript and
onnxruntime are needed to export and run ONNX files (``pip install mmsgformer[deploy]``)."""
from .model import (build_model, check_checkpoint_fits, checkpoint_fit, drop_pretrained,
                    plain_paths)
from .onnx import custom_translation_table, sg_aggregate_onnx

__all__ = ['build_model', 'check_checkpoint_fits', 'checkpoint_fit', 'drop_pretrained',
           'plain_paths', 'custom_translation_table', 'sg_aggregate_onnx']
