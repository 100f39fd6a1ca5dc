"""Reading official (and converted / runner) checkpoints into clean backbone state dicts.

Generic over backbones: SG-Former and Focal Transformer official files have the same layout
(timm-style training checkpoints, docs/design.md §14):

* a dict with ``state_dict_ema`` / ``state_dict`` (and ``optimizer``, ``args`` = an
  ``argparse.Namespace``, ...), or a ``model`` entry, or a bare state dict;
* keys maybe prefixed by ``module.`` (DataParallel) or, in OpenMMLab files, ``backbone.``;
* a classifier ``head.*`` next to the backbone keys.

Files are read with ``torch.load(weights_only=True)`` by default; ``argparse.Namespace`` is
allow-listed for that load (it holds only plain values). Nothing falls back to unsafe
unpickling silently: pass ``weights_only=False`` explicitly for a trusted file that needs it.
"""
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from mmsgformer.safe_globals import weights_only_load

STATE_DICT_KEYS = ('state_dict_ema', 'state_dict', 'model')


@dataclass
class CheckpointContent:
    """What :func:`read_state_dict` found.

    Attributes:
        backbone: backbone tensors, keys without ``module.``/``backbone.`` prefixes.
        head: classifier tensors, keys relative to ``head.`` (official: ``weight``, ``bias``;
            mmpretrain: ``fc.weight``, ``fc.bias``).
        source: which entry was used, e.g. ``"state_dict_ema"`` or ``"bare dict"``.
        dropped: keys that were neither backbone nor head (e.g. ``neck.*``,
            ``data_preprocessor.*`` of an OpenMMLab file), after prefix stripping.
        meta: the non-tensor top-level entries of the file (``epoch``, ``arch``, ...), if any.
    """

    backbone: Dict[str, torch.Tensor]
    head: Dict[str, torch.Tensor]
    source: str
    dropped: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)


# What ``torch.save`` writes: a zip archive holding ``<name>/data.pkl``, or (the legacy format,
# ``_use_new_zipfile_serialization=False``) a pickle of torch's magic number first.
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)[2:]  # LONG1 opcode + bytes


def check_torch_file(path: str) -> None:
    """Raise ValueError when ``path`` is not a file written by ``torch.save``.

    Without this, torch's weights-only loader reports any other file (text, a plain pickle,
    safetensors) as one that "pickles objects that are not allow-listed".
    """
    with open(path, 'rb') as f:
        head = f.read(32)
    if head[:1] == b'\x80' and _LEGACY_TORCH_MAGIC in head:
        return
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n == 'data.pkl' or n.endswith('/data.pkl') for n in archive.namelist()):
                return
        kind = 'a zip archive without the data.pkl of torch.save'
    elif not head:
        kind = 'empty'
    elif head[:1] == b'\x80':
        kind = 'a plain pickle (pickle.dump), not torch.save output'
    elif len(head) >= 9 and head[8:9] == b'{':
        kind = ('a safetensors file (read it with safetensors.torch.load_file, or convert it '
                'with torch.save)')
    else:
        kind = f'of unknown format (first bytes {head[:8]!r})'
    raise ValueError(f'checkpoint {path!r} is not a torch checkpoint (a torch.save zip archive '
                     f'or legacy torch.save file): it is {kind}')


def load_file(path: str, map_location: Any = 'cpu', weights_only: bool = True) -> Any:
    """``torch.load`` a checkpoint file safely (``weights_only=True`` unless told otherwise).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a ``torch.save`` file at all (:func:`check_torch_file`), or
            it needs unpickling of objects that are not allow-listed; the message
            names the file and the way out (``weights_only=False`` for a trusted file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file {path!r} does not exist')
    check_torch_file(path)
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    # The package-wide allow-list (argparse.Namespace, HistoryBuffer, numpy) is what makes
    # official and runner checkpoints load (on torch < 2.4 through a restricted unpickler). Not
    # torch's ``safe_globals`` context manager: on exit it removes its classes even when they had
    # been allow-listed before.
    try:
        return weights_only_load(path, map_location=map_location)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f'checkpoint {path!r} cannot be loaded with weights_only=True: it pickles objects '
            f'that are not allow-listed ({str(err).splitlines()[0]}). If you trust the file, '
            f'load it with weights_only=False (tools/model_converters/convert_official.py '
            f'--unsafe-load), or allow-list the class with torch.serialization.add_safe_globals.'
        ) from err


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def select_state_dict(ckpt: Any, path: str = '<checkpoint>') -> Tuple[Dict[str, torch.Tensor], str]:
    """Pick the weights: ``state_dict_ema`` > ``state_dict`` > ``model`` > bare dict.

    Returns:
        ``(state_dict, source)`` where ``source`` names the entry used.

    Raises:
        ValueError: nothing in the file looks like a state dict.
    """
    if isinstance(ckpt, Mapping):
        for key in STATE_DICT_KEYS:
            value = ckpt.get(key)
            if _is_state_dict(value):
                return dict(value), key
        if _is_state_dict(ckpt):
            return dict(ckpt), 'bare dict'
        tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
        if tensors and not any(isinstance(ckpt.get(k), Mapping) for k in STATE_DICT_KEYS):
            return tensors, 'bare dict'
        raise ValueError(f'checkpoint {path!r} has no state dict: none of {STATE_DICT_KEYS} '
                         f'holds tensors and it is not a bare state dict '
                         f'(top-level keys: {sorted(map(str, ckpt))[:10]})')
    raise ValueError(f'checkpoint {path!r} holds a {type(ckpt).__name__}, not a dict')


def _strip(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix):]
    return key


def split_state_dict(state: Mapping[str, torch.Tensor], prefix: Optional[str] = None
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], List[str]]:
    """Strip ``module.``, select the backbone and set the head aside.

    * a leading ``module.`` (any number) is removed from every key;
    * ``prefix`` given (e.g. ``'backbone.'``): only keys starting with it are the backbone;
    * else, if some keys start with ``backbone.`` (OpenMMLab model): those are the backbone;
    * else every key except ``head.*`` is the backbone (official layout);
    * ``head.*`` keys go to the head dict (relative to ``head.``); the rest is dropped.

    Returns:
        ``(backbone, head, dropped_keys)``.
    """
    clean = {_strip(k, 'module.'): v for k, v in state.items()}
    if prefix is None and any(k.startswith('backbone.') for k in clean):
        prefix = 'backbone.'
    backbone, head, dropped = {}, {}, []
    for k, v in clean.items():
        if prefix and k.startswith(prefix):
            backbone[k[len(prefix):]] = v
        elif k.startswith('head.'):
            head[k[len('head.'):]] = v
        elif prefix:
            dropped.append(k)
        else:
            backbone[k] = v
    return backbone, head, dropped


def read_state_dict(path: str, map_location: Any = 'cpu', prefix: Optional[str] = None,
                    weights_only: bool = True) -> CheckpointContent:
    """Read a checkpoint file into a :class:`CheckpointContent` (clean backbone + head).

    Args:
        path: local file (official training checkpoint, converted file, runner checkpoint).
        map_location: passed to ``torch.load``.
        prefix: keep only keys under this prefix as the backbone (default: ``backbone.`` when
            present, else everything but ``head.*``).
        weights_only: ``torch.load`` mode; ``False`` only for trusted files.
    """
    ckpt = load_file(path, map_location=map_location, weights_only=weights_only)
    state, source = select_state_dict(ckpt, path)
    backbone, head, dropped = split_state_dict(state, prefix)
    meta = {}
    if isinstance(ckpt, Mapping) and source != 'bare dict':
        meta = {k: v for k, v in ckpt.items()
                if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return CheckpointContent(backbone, head, source, dropped, meta)


__all__ = ['CheckpointContent', 'load_file', 'select_state_dict', 'split_state_dict',
           'read_state_dict', 'STATE_DICT_KEYS']
