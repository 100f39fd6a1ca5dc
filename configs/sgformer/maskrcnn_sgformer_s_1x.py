# Mask R-CNN with an SG-Former-S backbone + FPN, COCO 2017, 1x schedule, 8 GPUs x 2 images (see
# _base_/det/mask-rcnn_fpn_adamw_1x.py). The other sizes and the 3x schedule inherit this file.
_base_ = ['../_base_/det/mask-rcnn_fpn_adamw_1x.py']

# ImageNet-1k weights of the backbone: convert the official checkpoint once with
#   python tools/model_converters/convert_official.py SG-Former-S.pth \
#       checkpoints/sgformer_s_in1k_backbone.pth --format backbone --model sgformer
# (or use the EMA weights of a sgformer_s_in1k.py run). The 56x56 position table is resized to
# each image's stem grid at run time.
pretrained = 'checkpoints/sgformer_s_in1k_backbone.pth'
model = dict(
    backbone=dict(_delete_=True, type='SGFormer', arch='s', drop_path_rate=0.1,
                  pretrain_img_size=224, out_indices=(0, 1, 2, 3), with_cp=False,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
