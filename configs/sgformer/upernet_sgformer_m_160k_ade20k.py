# UperNet + SG-Former-M, ADE20K, 160k iterations: upernet_sgformer_s_160k_ade20k.py with M.
_base_ = './upernet_sgformer_s_160k_ade20k.py'
pretrained = 'checkpoints/sgformer_m_in1k_backbone.pth'
model = dict(backbone=dict(arch='m', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
