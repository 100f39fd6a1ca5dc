_base_ = './sgformer/sgformer_b_in1k.py'  # an alias (configs/README.md)
