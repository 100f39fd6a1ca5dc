# CPU demo: the real Mask R-CNN + SG-Former config (configs/sgformer/maskrcnn_sgformer_s_1x.py)
# shrunk to train in minutes on the synthetic shapes dataset of tools/misc/make_synthetic_data.py
# (3 classes, 160x160 images): a tiny SG-Former (dims 32-256, depths 2/2/2/1) with random init
# (no ImageNet weights here), 64-channel FPN/heads (2-conv mask head, RoIAlign sampling ratio 2,
# 64 sampled RoIs per image: the CPU cost of an iteration is mostly in the heads), an
# iteration-based schedule, and score_thr=0 so the untrained model's (near-zero) mAP can be
# measured too. Used by tools/demo.py.
_base_ = ['../sgformer/maskrcnn_sgformer_s_1x.py']

data_root = 'data/synthetic/coco/'
classes = ('circle', 'rectangle', 'triangle')
img_scale = (160, 160)
max_iters = 300

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=[32, 64, 128, 256], num_heads=[2, 2, 4, 8],
                  depths=[2, 2, 2, 1]),
        drop_path_rate=0.0,
        pretrain_img_size=img_scale[0],
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(
            out_channels=64, roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2)),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(
            out_channels=64, roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2)),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64,
                       num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(score_thr=0.0, max_per_img=50)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min=1e-5),
]
optim_wrapper = dict(optimizer=dict(lr=5e-4), clip_grad=dict(max_norm=10.0))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
