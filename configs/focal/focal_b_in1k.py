# Focal-B, ImageNet-1k, 224x224: focal_t_in1k.py with drop path 0.5.
_base_ = './focal_t_in1k.py'
model = dict(backbone=dict(arch='b', drop_path_rate=0.5), head=dict(in_channels=1024))
