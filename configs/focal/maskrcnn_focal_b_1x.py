# Mask R-CNN + Focal-B, COCO 2017, 1x schedule: maskrcnn_focal_t_1x.py with the B backbone.
_base_ = './maskrcnn_focal_t_1x.py'
pretrained = 'checkpoints/focal_b_in1k_backbone.pth'
model = dict(backbone=dict(arch='b', drop_path_rate=0.5, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[128, 256, 512, 1024]))
