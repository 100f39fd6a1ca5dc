_base_ = './focal/maskrcnn_focal_t_3x.py'  # an alias (configs/README.md)
