_base_ = './sgformer/maskrcnn_sgformer_m_1x.py'  # an alias (configs/README.md)
