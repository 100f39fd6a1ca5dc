_base_ = './sgformer/maskrcnn_sgformer_b_1x.py'  # an alias (configs/README.md)
