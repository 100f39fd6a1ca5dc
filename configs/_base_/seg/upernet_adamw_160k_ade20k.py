# UperNet (+ auxiliary FCN head on stage 3) on ADE20K (mmseg's data/ade/ADEChallengeData2016),
# 512x512 crops with random resize (ratio 0.5-2.0), random flip and photometric distortion;
# AdamW lr 6e-5, wd 0.01, batch 2/GPU x 8 GPUs = 16, 160k iterations: linear warm-up over 1500
# iterations, then linear decay to 0 (poly, power 1). No weight decay on norms and position
# tables. Single-scale test on the (2048, 512) resize; the *_ms.py configs add multi-scale + flip.
# mmseg's Swin-T stays in the model: each family's S/T config replaces it (`_delete_=True`).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py'
]
custom_imports = dict(imports=['mmsgformer'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(num_classes=150),
             auxiliary_head=dict(num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={
        'pos_embed': dict(decay_mult=0.0), 'relative_position_bias_table': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
