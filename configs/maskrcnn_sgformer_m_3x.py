# Mask R-CNN with an SG-Former-M backbone + FPN, COCO 2017, 3x schedule (see
# _base_/det/mask-rcnn_fpn_adamw_3x.py), 8 GPUs x 2 images.
_base_ = ['./_base_/det/mask-rcnn_fpn_adamw_3x.py']

# ImageNet-1k weights of the backbone: convert the official checkpoint once with
#   python tools/convert_official.py SG-Former-M.pth checkpoints/sgformer_m_in1k_backbone.pth \
#       --format backbone --model sgformer
# (or use the EMA weights of a configs/sgformer_m_in1k.py run). The 56x56 position table is
# resized to each image's stem grid at run time.
pretrained = 'checkpoints/sgformer_m_in1k_backbone.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='SGFormer',
        arch='m',
        drop_path_rate=0.2,
        pretrain_img_size=224,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
