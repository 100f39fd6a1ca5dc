_base_ = './focal/focal_t_in1k.py'  # an alias (configs/README.md)
