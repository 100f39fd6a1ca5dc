# SG-Former ImageNet-1k classification, 224x224, official recipe (docs/design.md §16):
# 300 epochs, total batch 1024 (128/GPU x 8 GPUs), AdamW lr 1e-3 wd 0.05, cosine with 20 warm-up
# epochs (from 1e-6) to 1e-5, RandAugment rand-m9-mstd0.5-inc1, mixup 0.8, cutmix 1.0, label
# smoothing 0.1, random erasing 0.25, EMA 0.99992, no weight decay on norms, biases and pos_embed.
# The per-size configs (configs/sgformer_{s,m,b}_in1k.py) set the arch and the drop path rate.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmsgformer'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SGFormer',
        arch='s',
        drop_path_rate=0.1,
        pretrain_img_size=224,
        out_indices=(3, ),
        init_cfg=None),  # the backbone's own init is the official one (design §10)
    # the official head: norm4 (inside the backbone) -> mean over tokens -> Linear
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

# data: 128 images per GPU x 8 GPUs = 1024; evaluation at crop_pct 0.9 (resize 248, crop 224),
# bicubic, as the official evaluation.
train_dataloader = dict(batch_size=128)
val_dataloader = dict(
    batch_size=128,
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=248, edge='short', backend='pillow',
             interpolation='bicubic'),
        dict(type='CenterCrop', crop_size=224),
        dict(type='PackInputs'),
    ]))
test_dataloader = val_dataloader

# schedule: AdamW lr 1e-3 (= 5e-4 * 1024 / 512), wd 0.05; no decay on norms (LayerNorm and the
# GroupNorms named *.bn), biases, other 1-D parameters and pos_embed.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'pos_embed': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)

# EMA of the weights (decay 0.99992 -> mmengine momentum 1 - 0.99992); the EMA weights are
# the ones validated and saved as the model weights, as in the official evaluation.
custom_hooks = [dict(type='EMAHook', momentum=8e-5, update_buffers=True, priority='ABOVE_NORMAL')]
