# Semantic FPN + SG-Former-M, ADE20K, 80k iterations: fpn_sgformer_s_80k_ade20k.py with M.
_base_ = './fpn_sgformer_s_80k_ade20k.py'
pretrained = 'checkpoints/sgformer_m_in1k_backbone.pth'
model = dict(backbone=dict(arch='m', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
