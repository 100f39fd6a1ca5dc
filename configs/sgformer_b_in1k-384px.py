_base_ = './sgformer/sgformer_b_in1k-384px.py'  # an alias (configs/README.md)
