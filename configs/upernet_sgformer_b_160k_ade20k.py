_base_ = './sgformer/upernet_sgformer_b_160k_ade20k.py'  # an alias (configs/README.md)
