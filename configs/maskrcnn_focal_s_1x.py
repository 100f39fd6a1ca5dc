_base_ = './focal/maskrcnn_focal_s_1x.py'  # an alias (configs/README.md)
