_base_ = './sgformer/sgformer_m_in1k.py'  # an alias (configs/README.md)
