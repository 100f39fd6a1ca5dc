# CPU demo: the real UperNet + SG-Former config (configs/sgformer/upernet_sgformer_s_160k_ade20k.py)
# shrunk to train in minutes on the synthetic ADE20K-format scenes of
# tools/misc/make_synthetic_data.py (128x128 crops): a tiny SG-Former with random init, 64-channel
# UperNet head (32-channel auxiliary FCN head), BN instead of SyncBN, a short iteration schedule.
# Used by tools/demo.py.
_base_ = ['../sgformer/upernet_sgformer_s_160k_ade20k.py']

data_root = 'data/synthetic/ade/ADEChallengeData2016'
crop_size = (128, 128)
max_iters = 300
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=[32, 64, 128, 256], num_heads=[2, 2, 4, 8],
                  depths=[2, 2, 2, 1]),
        drop_path_rate=0.0,
        pretrain_img_size=crop_size[0],
        init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=32, norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=max_iters, by_epoch=False),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    visualization=dict(type='SegVisualizationHook', draw=False))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
