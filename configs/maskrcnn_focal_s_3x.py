# Mask R-CNN with a Focal-S backbone + FPN, COCO 2017, 3x schedule (see
# _base_/det/mask-rcnn_fpn_adamw_3x.py), 8 GPUs x 2 images. Window borders: 'masked'
# (no cyclic wrap-around of the surrounding tokens on arbitrary image sizes).
_base_ = ['./_base_/det/mask-rcnn_fpn_adamw_3x.py']

# ImageNet-1k weights of the backbone: convert the official checkpoint once with
#   python tools/convert_official.py focal-s.pth checkpoints/focal_s_in1k_backbone.pth \
#       --format backbone --model focal
pretrained = 'checkpoints/focal_s_in1k_backbone.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='FocalTransformer',
        arch='s',
        drop_path_rate=0.3,
        border_mode='masked',
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
