# SG-Former-S, ImageNet-1k fine-tuning at 384x384 from the 224 model: 30 epochs, batch 64/GPU x 8,
# AdamW lr 5e-6 cosine to 5e-8 (no warm-up), wd 1e-8, drop path 0.4. `pretrain_img_size=384`: the
# 56x56 position table of the 224 checkpoint is resized to 96x96 (bicubic) when it is loaded.
_base_ = './sgformer_s_in1k.py'

model = dict(backbone=dict(pretrain_img_size=384, drop_path_rate=0.4))

bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=384, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=384, backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=64, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=5e-6, weight_decay=1e-8))
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min=5e-8, by_epoch=True, begin=0, end=30,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=512)
# The 224 classifier to fine-tune: the last checkpoint of sgformer_s_in1k.py, or the official
# weights converted with `python tools/model_converters/convert_official.py SG-Former-S.pth
# checkpoints/sgformer_s_in1k.pth --format classifier --model sgformer`.
load_from = 'checkpoints/sgformer_s_in1k.pth'
