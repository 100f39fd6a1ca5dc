# Multi-scale + flip test (ratios 0.5-1.75 of the (2048, 512) scale, with and without horizontal
# flip, logits averaged) of upernet_sgformer_m_160k_ade20k.py. Test-only config: evaluate a
# trained checkpoint with
#   mim test mmsegmentation configs/upernet_sgformer_m_160k_ade20k_ms.py --checkpoint CKPT
_base_ = ['./upernet_sgformer_m_160k_ade20k.py']

model = dict(_delete_=True, type='SegTTAModel', module={{_base_.model}})
test_dataloader = dict(dataset=dict(pipeline={{_base_.tta_pipeline}}))
