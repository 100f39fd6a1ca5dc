# UperNet with an SG-Former-B backbone, ADE20K, 512x512, 160k iterations, 8 GPUs x 2 images
# (see _base_/seg/upernet_adamw_160k_ade20k.py). Single-scale test; multi-scale + flip test:
# upernet_sgformer_b_160k_ade20k_ms.py.
_base_ = ['./_base_/seg/upernet_adamw_160k_ade20k.py']

# ImageNet-1k weights of the backbone: convert the official checkpoint once with
#   python tools/convert_official.py SG-Former-B.pth checkpoints/sgformer_b_in1k_backbone.pth \
#       --format backbone --model sgformer
pretrained = 'checkpoints/sgformer_b_in1k_backbone.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='SGFormer',
        arch='b',
        drop_path_rate=0.4,
        pretrain_img_size=224,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
