_base_ = './focal/upernet_focal_b_160k_ade20k.py'  # an alias (configs/README.md)
