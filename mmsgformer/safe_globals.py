"""Allow-list the few classes that OpenMMLab and official SG-Former checkpoints pickle.

torch >= 2.6 loads checkpoints with ``weights_only=True``. That rejects two kinds of files our
users load every day:

* mmengine runner checkpoints (``--resume``, ``load_checkpoint``, ``mim test --checkpoint``): the
  message hub pickles ``mmengine.logging.HistoryBuffer`` objects holding numpy arrays and scalars;
* official SG-Former training checkpoints: they pickle the training ``argparse.Namespace`` under
  ``args``.

Instead of turning weights-only loading off, :func:`register_safe_globals` adds exactly these
classes to ``torch.serialization.add_safe_globals``. It runs on ``import mmsgformer``.
"""
import argparse
from typing import List

import torch

_registered = False


def _numpy_globals() -> List[object]:
    import numpy as np
    found: List[object] = [np.dtype, np.ndarray]
    # Where numpy pickles array scalars and arrays from (numpy 2 moved them to numpy._core).
    for mod_name in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            mod = __import__(mod_name, fromlist=['scalar', '_reconstruct'])
        except ImportError:
            continue
        found += [mod.scalar, mod._reconstruct]
        break
    # numpy >= 1.25 pickles dtypes through their own classes (numpy.dtypes.Float64DType, ...).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    return found


def safe_globals() -> List[object]:
    """The classes (and the one builtin) that weights-only loading must accept."""
    from mmengine.logging.history_buffer import HistoryBuffer
    # ``getattr``: a HistoryBuffer pickles its statistics methods as bound methods, i.e. as
    # ``getattr(buffer, 'min')``. The weights-only unpickler still refuses to *call* anything that
    # is not allow-listed, so this only lets it look up attributes of objects it already accepted.
    return [argparse.Namespace, HistoryBuffer, getattr] + _numpy_globals()


def register_safe_globals() -> None:
    """Add :func:`safe_globals` to torch's weights-only allow-list (idempotent)."""
    global _registered
    if _registered or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(safe_globals())
    _registered = True
