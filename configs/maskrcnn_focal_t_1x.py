_base_ = './focal/maskrcnn_focal_t_1x.py'  # an alias (configs/README.md)
