# SG-Former-M, ImageNet-1k, 224x224: sgformer_s_in1k.py with drop path 0.2.
_base_ = './sgformer_s_in1k.py'
model = dict(backbone=dict(arch='m', drop_path_rate=0.2))
