# Multi-scale (0.5-1.75 x (2048, 512)) + flip test of upernet_focal_t_160k_ade20k.py, logits
# averaged over the 12 views. Test only: mim test mmsegmentation THIS_CONFIG --checkpoint CKPT
_base_ = './upernet_focal_t_160k_ade20k.py'
model = dict(_delete_=True, type='SegTTAModel', module={{_base_.model}})
test_dataloader = dict(dataset=dict(pipeline={{_base_.tta_pipeline}}))
