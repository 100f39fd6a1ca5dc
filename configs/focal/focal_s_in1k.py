# Focal-S, ImageNet-1k, 224x224: focal_t_in1k.py with drop path 0.3.
_base_ = './focal_t_in1k.py'
model = dict(backbone=dict(arch='s', drop_path_rate=0.3))
