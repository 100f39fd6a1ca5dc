# SG-Former-S, ImageNet-1k, 224x224, the official recipe (design §16) on the shared ImageNet
# base: drop path 0.1, EMA 0.99992, no weight decay on pos_embed, evaluation at crop_pct 0.9
# (resize 248, centre crop 224, bicubic). M and B inherit this file.
_base_ = ['../_base_/cls/in1k_adamw_300e.py']

model = dict(
    backbone=dict(type='SGFormer', arch='s', drop_path_rate=0.1, pretrain_img_size=224,
                  out_indices=(3, ), init_cfg=None),  # the official init (design §10)
    # the official head: norm4 (inside the backbone) -> mean over tokens -> Linear
    head=dict(in_channels=512))

val_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=248, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]))
test_dataloader = val_dataloader

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.0)}))
# EMA of the weights (decay 0.99992 -> mmengine momentum 1 - 0.99992); the EMA weights are
# the ones validated and saved as the model weights, as in the official evaluation.
custom_hooks = [dict(type='EMAHook', momentum=8e-5, update_buffers=True, priority='ABOVE_NORMAL')]
