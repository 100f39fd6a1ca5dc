# Mask R-CNN + Focal-S, COCO 2017, 1x schedule: maskrcnn_focal_t_1x.py with the S backbone.
_base_ = './maskrcnn_focal_t_1x.py'
pretrained = 'checkpoints/focal_s_in1k_backbone.pth'
model = dict(backbone=dict(arch='s', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
