_base_ = './sgformer/fpn_sgformer_m_80k_ade20k.py'  # an alias (configs/README.md)
