"""Allow-list the few classes that OpenMMLab and official SG-Former checkpoints pickle.

torch >= 2.6 loads checkpoints with ``weights_only=True``. That rejects two kinds of files our
users load every day:

* mmengine runner checkpoints (``--resume``, ``load_checkpoint``, ``mim test --checkpoint``): the
  message hub pickles ``mmengine.logging.HistoryBuffer`` objects holding numpy arrays and scalars;
* official SG-Former training checkpoints: they pickle the training ``argparse.Namespace`` under
  ``args``.

Instead of turning weights-only loading off, :func:`register_safe_globals` adds exactly these
classes to ``torch.serialization.add_safe_globals``. It runs on ``import mmsgformer``.

torch < 2.4 has no ``add_safe_globals`` (and loads with ``weights_only=False`` by default): there
:func:`weights_only_load` reads files through a restricted unpickler instead, which accepts what
torch's own weights-only unpickler accepts plus these classes, and refuses every other global.
"""
import argparse
import codecs
import pickle
import types
from typing import Any, Dict, List

import torch

from .compat import HAS_SAFE_GLOBALS

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
    if _registered or not HAS_SAFE_GLOBALS:
        return
    torch.serialization.add_safe_globals(safe_globals())
    _registered = True


def _restricted_allowed() -> Dict[str, object]:
    """``'module.name'`` -> object: torch's weights-only globals, every torch dtype, and
    :func:`safe_globals` minus ``getattr`` (the plain unpickler below would let a file *call* the
    attributes it looks up; torch's weights-only unpickler does not)."""
    allowed: Dict[str, object] = dict(torch._weights_only_unpickler._get_allowed_globals())
    for name, value in list(vars(torch).items()):  # vars: no lazy submodule imports
        if isinstance(value, torch.dtype):
            allowed[f'torch.{name}'] = value
    # numpy 1.x pickles array bytes as _codecs.encode(text, 'latin1') (torch >= 2.4 allows it too)
    allowed['_codecs.encode'] = codecs.encode
    for obj in safe_globals():
        if obj is getattr:
            continue
        allowed[f'{obj.__module__}.{obj.__qualname__}'] = obj
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only allow-listed globals (the "restricting
    globals" recipe of the ``pickle`` docs). Aliases (numpy 1's ``numpy.core`` vs numpy 2's
    ``numpy._core``) are accepted when they resolve to an allowed object; only modules that hold
    allowed objects are ever imported."""

    _allowed: Dict[str, object] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = type(self)._allowed
        key = f'{module}.{name}'
        if key in allowed:
            return allowed[key]
        modules = {k.rsplit('.', 1)[0] for k in allowed} | {
            'numpy.core.multiarray', 'numpy._core.multiarray'}
        if module in modules:
            obj = super().find_class(module, name)
            if any(obj is a for a in allowed.values()):
                return obj
        raise pickle.UnpicklingError(
            f'Weights only load failed: unsupported global {key} (only torch tensors, numpy '
            f'arrays and mmsgformer.safe_globals.safe_globals() are allowed)')


def _restricted_pickle_module() -> types.ModuleType:
    """A module object for ``torch.load(pickle_module=...)`` using :class:`_RestrictedUnpickler`."""
    _RestrictedUnpickler._allowed = _restricted_allowed()
    module = types.ModuleType('mmsgformer_restricted_pickle')

    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()

    module.Unpickler = _RestrictedUnpickler
    module.load = load
    module.UnpicklingError = pickle.UnpicklingError
    return module


def weights_only_load(path: str, map_location: Any = 'cpu', restricted: bool = not HAS_SAFE_GLOBALS
                      ) -> Any:
    """Load a checkpoint safely: ``torch.load(weights_only=True)`` with :func:`safe_globals`
    allow-listed, or (torch < 2.4, or ``restricted=True``) through the restricted unpickler.

    Raises:
        pickle.UnpicklingError: the file pickles a global that is not allow-listed.
    """
    if not restricted:
        register_safe_globals()
        return torch.load(path, map_location=map_location, weights_only=True)
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=_restricted_pickle_module())
