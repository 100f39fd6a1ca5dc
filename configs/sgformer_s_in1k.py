# SG-Former-S, ImageNet-1k, 224x224, 300 epochs, 8 GPUs x 128 images (official recipe,
# see _base_/cls/sgformer_in1k_224.py). Drop path 0.1.
_base_ = ['./_base_/cls/sgformer_in1k_224.py']

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.1),
    head=dict(in_channels=512))
