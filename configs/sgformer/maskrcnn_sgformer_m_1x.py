# Mask R-CNN + SG-Former-M, COCO 2017, 1x schedule: maskrcnn_sgformer_s_1x.py with the M backbone.
_base_ = './maskrcnn_sgformer_s_1x.py'
pretrained = 'checkpoints/sgformer_m_in1k_backbone.pth'
model = dict(backbone=dict(arch='m', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
