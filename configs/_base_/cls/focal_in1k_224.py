# Focal Transformer ImageNet-1k classification, 224x224: the official recipe (Swin's): 300
# epochs, total batch 1024 (128/GPU x 8 GPUs), AdamW lr 1e-3 wd 0.05, cosine with 20 warm-up
# epochs to 1e-5, gradient clipping 5.0, RandAugment rand-m9-mstd0.5-inc1, mixup 0.8, cutmix 1.0,
# label smoothing 0.1, random erasing 0.25, no weight decay on norms, biases and the relative
# position tables (`relative_position_bias_table*`). Evaluation: resize 256, centre crop 224.
# The per-size configs (configs/focal_{t,s,b}_in1k.py) set the arch and the drop path rate.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmsgformer'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='FocalTransformer',
        arch='t',
        drop_path_rate=0.2,
        out_indices=(3, ),
        border_mode='official',
        init_cfg=None),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'relative_position_bias_table': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)
