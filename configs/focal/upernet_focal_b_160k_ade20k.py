# UperNet + Focal-B, ADE20K, 160k iterations: upernet_focal_t_160k_ade20k.py with B.
_base_ = './upernet_focal_t_160k_ade20k.py'
pretrained = 'checkpoints/focal_b_in1k_backbone.pth'
model = dict(backbone=dict(arch='b', drop_path_rate=0.5, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[128, 256, 512, 1024]),
             auxiliary_head=dict(in_channels=512))
