_base_ = './sgformer/upernet_sgformer_s_160k_ade20k_ms.py'  # an alias (configs/README.md)
