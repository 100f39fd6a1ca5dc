_base_ = './focal/maskrcnn_focal_s_3x.py'  # an alias (configs/README.md)
