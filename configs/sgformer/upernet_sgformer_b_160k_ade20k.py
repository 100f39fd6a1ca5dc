# UperNet + SG-Former-B, ADE20K, 160k iterations: upernet_sgformer_s_160k_ade20k.py with B.
_base_ = './upernet_sgformer_s_160k_ade20k.py'
pretrained = 'checkpoints/sgformer_b_in1k_backbone.pth'
model = dict(backbone=dict(arch='b', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[96, 192, 384, 768]),
             auxiliary_head=dict(in_channels=384))
