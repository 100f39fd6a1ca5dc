_base_ = './sgformer/sgformer_s_in1k.py'  # an alias (configs/README.md)
