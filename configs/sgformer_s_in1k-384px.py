# SG-Former-S, ImageNet-1k fine-tuning at 384x384 for 30 epochs from the 224 model
# (see _base_/cls/sgformer_in1k_384.py): AdamW lr 5e-6, wd 1e-8, drop path 0.4.
_base_ = ['./_base_/cls/sgformer_in1k_384.py']

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.4, pretrain_img_size=384),
    head=dict(in_channels=512))
# The 224 classifier to fine-tune: the last checkpoint of configs/sgformer_s_in1k.py, or the
# official weights converted with
#   python tools/convert_official.py SG-Former-S.pth checkpoints/sgformer_s_in1k.pth \
#       --format classifier --model sgformer
load_from = 'checkpoints/sgformer_s_in1k.pth'
