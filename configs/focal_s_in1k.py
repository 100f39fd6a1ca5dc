_base_ = './focal/focal_s_in1k.py'  # an alias (configs/README.md)
