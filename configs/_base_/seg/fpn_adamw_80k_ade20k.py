# Semantic FPN on ADE20K (mmseg's data/ade/ADEChallengeData2016), 512x512 crops, AdamW lr 1e-4,
# wd 1e-4, batch 2/GPU x 8 GPUs = 16, 80k iterations, poly decay (power 0.9) as in PVT's
# Semantic FPN setting. No weight decay on norms and position tables.
# mmseg's ResNet-50 stays in the model: the SG-Former-S config replaces it (`_delete_=True`).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['mmsgformer'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, pretrained=None,
             decode_head=dict(num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={
        'pos_embed': dict(decay_mult=0.0), 'relative_position_bias_table': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
