_base_ = './sgformer/maskrcnn_sgformer_s_1x.py'  # an alias (configs/README.md)
