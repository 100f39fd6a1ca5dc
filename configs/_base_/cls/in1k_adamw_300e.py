# ImageNet-1k classification at 224x224, the Swin recipe both official codes train with: 300
# epochs, total batch 1024 (128/GPU x 8 GPUs), mmpretrain's Swin data pipeline (RandAugment
# rand-m9-mstd0.5-inc1, random erasing 0.25; resize 256 + centre crop 224 for evaluation) and AdamW
# schedule (lr 1e-3 = 5e-4 * 1024 / 512, wd 0.05, 20 linear warm-up epochs, cosine to 1e-5); mixup
# 0.8, cutmix 1.0 and label smoothing 0.1 in the classifier; no weight decay on norms, biases and
# other 1-D parameters (the family configs add their position tables). No backbone here.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmsgformer'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(paramwise_cfg=dict(
    _delete_=True, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
