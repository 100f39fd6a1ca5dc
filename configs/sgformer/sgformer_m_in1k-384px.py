# SG-Former-M, ImageNet-1k fine-tuning at 384x384: sgformer_s_in1k-384px.py on the M model.
_base_ = './sgformer_s_in1k-384px.py'
model = dict(backbone=dict(arch='m'))
load_from = 'checkpoints/sgformer_m_in1k.pth'
