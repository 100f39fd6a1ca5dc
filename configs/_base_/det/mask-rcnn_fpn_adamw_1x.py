# Mask R-CNN + FPN on COCO 2017 (mmdet's data/coco), 1x schedule with AdamW as in mmdet's Swin
# configs: 12 epochs, single scale (shorter side 800, longer side <= 1333), AdamW lr 1e-4, wd 0.05,
# linear warm-up over 1000 iterations, lr x0.1 at epochs 8 and 11, batch 2/GPU x 8 GPUs = 16.
# No weight decay on norms (by type: LayerNorm, GroupNorm, BN) and on position tables.
# ImageNet mean/std normalisation in RGB order (mmdet's Mask R-CNN data preprocessor).
# mmdet's ResNet-50 stays in the model: each family's S/T config replaces it (`_delete_=True`).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsgformer'], allow_failed_imports=False)

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
        }),
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05))
auto_scale_lr = dict(enable=False, base_batch_size=16)
