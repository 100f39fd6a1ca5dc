_base_ = './sgformer/upernet_sgformer_m_160k_ade20k_ms.py'  # an alias (configs/README.md)
