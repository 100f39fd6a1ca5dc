# Focal-B, ImageNet-1k, 224x224, 300 epochs, 8 GPUs x 128 images (official recipe, see
# _base_/cls/focal_in1k_224.py). Drop path 0.5.
_base_ = ['./_base_/cls/focal_in1k_224.py']

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.5),
    head=dict(in_channels=1024))
