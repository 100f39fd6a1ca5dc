# UperNet with a Focal-T backbone, ADE20K, 512x512, 160k iterations, 8 GPUs x 2 images (see
# _base_/seg/upernet_adamw_160k_ade20k.py), 'masked' window borders. Multi-scale + flip test:
# upernet_focal_t_160k_ade20k_ms.py. S and B inherit this file.
_base_ = ['../_base_/seg/upernet_adamw_160k_ade20k.py']

# ImageNet-1k weights of the backbone: converted as for maskrcnn_focal_t_1x.py.
pretrained = 'checkpoints/focal_t_in1k_backbone.pth'
model = dict(
    backbone=dict(_delete_=True, type='FocalTransformer', arch='t', drop_path_rate=0.2,
                  border_mode='masked', out_indices=(0, 1, 2, 3),
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
