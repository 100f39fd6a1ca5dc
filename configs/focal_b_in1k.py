_base_ = './focal/focal_b_in1k.py'  # an alias (configs/README.md)
