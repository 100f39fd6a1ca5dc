# UperNet with a Focal-B backbone, ADE20K, 512x512, 160k iterations, 8 GPUs x 2 images
# (see _base_/seg/upernet_adamw_160k_ade20k.py). Multi-scale + flip test:
# upernet_focal_b_160k_ade20k_ms.py.
_base_ = ['./_base_/seg/upernet_adamw_160k_ade20k.py']

# ImageNet-1k weights of the backbone: convert the official checkpoint once with
#   python tools/convert_official.py focal-b.pth checkpoints/focal_b_in1k_backbone.pth \
#       --format backbone --model focal
pretrained = 'checkpoints/focal_b_in1k_backbone.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='FocalTransformer',
        arch='b',
        drop_path_rate=0.5,
        border_mode='masked',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150))
