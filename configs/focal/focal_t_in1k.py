# Focal-T, ImageNet-1k, 224x224, the official recipe (Swin's) on the shared ImageNet base: drop
# path 0.2, gradient clipping 5.0, no weight decay on the relative position tables, evaluation
# at resize 256 + centre crop 224. S and B inherit this file.
_base_ = ['../_base_/cls/in1k_adamw_300e.py']

model = dict(
    backbone=dict(type='FocalTransformer', arch='t', drop_path_rate=0.2, out_indices=(3, ),
                  border_mode='official', init_cfg=None),
    head=dict(in_channels=768))

optim_wrapper = dict(
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(custom_keys={'relative_position_bias_table': dict(decay_mult=0.0)}))
