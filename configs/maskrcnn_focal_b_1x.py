_base_ = './focal/maskrcnn_focal_b_1x.py'  # an alias (configs/README.md)
