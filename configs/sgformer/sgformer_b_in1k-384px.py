# SG-Former-B, ImageNet-1k fine-tuning at 384x384: sgformer_s_in1k-384px.py on the B model.
_base_ = './sgformer_s_in1k-384px.py'
model = dict(backbone=dict(arch='b'), head=dict(in_channels=768))
load_from = 'checkpoints/sgformer_b_in1k.pth'
