_base_ = './sgformer/upernet_sgformer_s_160k_ade20k.py'  # an alias (configs/README.md)
