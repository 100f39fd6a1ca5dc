_base_ = './sgformer/sgformer_m_in1k-384px.py'  # an alias (configs/README.md)
