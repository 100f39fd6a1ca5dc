# UperNet + Focal-S, ADE20K, 160k iterations: upernet_focal_t_160k_ade20k.py with S.
_base_ = './upernet_focal_t_160k_ade20k.py'
pretrained = 'checkpoints/focal_s_in1k_backbone.pth'
model = dict(backbone=dict(arch='s', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
