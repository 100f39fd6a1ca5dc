# Semantic FPN + SG-Former-B, ADE20K, 80k iterations: fpn_sgformer_s_80k_ade20k.py with B.
_base_ = './fpn_sgformer_s_80k_ade20k.py'
pretrained = 'checkpoints/sgformer_b_in1k_backbone.pth'
model = dict(backbone=dict(arch='b', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
