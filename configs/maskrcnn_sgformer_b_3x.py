_base_ = './sgformer/maskrcnn_sgformer_b_3x.py'  # an alias (configs/README.md)
