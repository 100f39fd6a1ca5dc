_base_ = './sgformer/maskrcnn_sgformer_m_3x.py'  # an alias (configs/README.md)
