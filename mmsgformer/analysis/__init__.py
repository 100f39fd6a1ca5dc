"""Model analysis helpers: FLOP/parameter counting and significance-map pictures.

``flops`` needs mmengine (and the codebase of a config); ``significance_maps`` only torch.
Import the submodules directly; nothing heavy runs at import time.
"""
from .significance_maps import (group_size_map, rank_order, reallocation_map, resize_nearest,
                                segment_index_map, segment_of_ranks, token_ranks)

__all__ = ['group_size_map', 'rank_order', 'reallocation_map', 'resize_nearest',
           'segment_index_map', 'segment_of_ranks', 'token_ranks']
