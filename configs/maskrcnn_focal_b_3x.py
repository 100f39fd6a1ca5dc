_base_ = './focal/maskrcnn_focal_b_3x.py'  # an alias (configs/README.md)
