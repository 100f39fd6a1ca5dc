# Mask R-CNN + SG-Former-B, COCO 2017, 1x schedule: maskrcnn_sgformer_s_1x.py with the B backbone.
_base_ = './maskrcnn_sgformer_s_1x.py'
pretrained = 'checkpoints/sgformer_b_in1k_backbone.pth'
model = dict(backbone=dict(arch='b', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
