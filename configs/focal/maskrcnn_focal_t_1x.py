# Mask R-CNN with a Focal-T backbone + FPN, COCO 2017, 1x schedule, 8 GPUs x 2 images (see
# _base_/det/mask-rcnn_fpn_adamw_1x.py). Window borders: 'masked' (no cyclic wrap-around of the
# surrounding tokens on arbitrary image sizes). The other sizes and the 3x schedule inherit this.
_base_ = ['../_base_/det/mask-rcnn_fpn_adamw_1x.py']

# ImageNet-1k weights of the backbone: convert the official checkpoint once with
#   python tools/model_converters/convert_official.py focal-t.pth \
#       checkpoints/focal_t_in1k_backbone.pth --format backbone --model focal
pretrained = 'checkpoints/focal_t_in1k_backbone.pth'
model = dict(
    backbone=dict(_delete_=True, type='FocalTransformer', arch='t', drop_path_rate=0.2,
                  border_mode='masked', out_indices=(0, 1, 2, 3), with_cp=False,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
