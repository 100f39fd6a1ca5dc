# Mask R-CNN + Focal-S, COCO 2017, 3x schedule: maskrcnn_focal_t_3x.py with the S backbone.
_base_ = './maskrcnn_focal_t_3x.py'
pretrained = 'checkpoints/focal_s_in1k_backbone.pth'
model = dict(backbone=dict(arch='s', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
