# Semantic FPN with an SG-Former-S backbone, ADE20K, 512x512, 80k iterations, AdamW lr 1e-4,
# wd 1e-4 (see _base_/seg/fpn_adamw_80k_ade20k.py). M and B inherit this file.
_base_ = ['../_base_/seg/fpn_adamw_80k_ade20k.py']

# ImageNet-1k weights of the backbone: converted as for upernet_sgformer_s_160k_ade20k.py.
pretrained = 'checkpoints/sgformer_s_in1k_backbone.pth'
model = dict(
    backbone=dict(_delete_=True, type='SGFormer', arch='s', drop_path_rate=0.1,
                  pretrain_img_size=224, out_indices=(0, 1, 2, 3),
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
