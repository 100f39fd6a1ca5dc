_base_ = './sgformer/maskrcnn_sgformer_s_3x.py'  # an alias (configs/README.md)
