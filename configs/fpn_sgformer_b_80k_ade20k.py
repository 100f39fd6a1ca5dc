_base_ = './sgformer/fpn_sgformer_b_80k_ade20k.py'  # an alias (configs/README.md)
