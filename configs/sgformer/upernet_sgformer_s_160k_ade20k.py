# UperNet with an SG-Former-S backbone, ADE20K, 512x512, 160k iterations, 8 GPUs x 2 images (see
# _base_/seg/upernet_adamw_160k_ade20k.py). Single-scale test; multi-scale + flip test:
# upernet_sgformer_s_160k_ade20k_ms.py. M and B inherit this file.
_base_ = ['../_base_/seg/upernet_adamw_160k_ade20k.py']

# ImageNet-1k weights of the backbone: convert the official checkpoint once with
#   python tools/model_converters/convert_official.py SG-Former-S.pth \
#       checkpoints/sgformer_s_in1k_backbone.pth --format backbone --model sgformer
pretrained = 'checkpoints/sgformer_s_in1k_backbone.pth'
model = dict(
    backbone=dict(_delete_=True, type='SGFormer', arch='s', drop_path_rate=0.1,
                  pretrain_img_size=224, out_indices=(0, 1, 2, 3),
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
