_base_ = './sgformer/upernet_sgformer_b_160k_ade20k_ms.py'  # an alias (configs/README.md)
