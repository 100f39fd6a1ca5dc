# SG-Former-B, ImageNet-1k, 224x224: sgformer_s_in1k.py with drop path 0.4.
_base_ = './sgformer_s_in1k.py'
model = dict(backbone=dict(arch='b', drop_path_rate=0.4), head=dict(in_channels=768))
