"""Config loading, the one codebase detector of the tools, and codebase registration."""
import importlib
import os.path as osp
import re
from typing import Any, List, Optional, Tuple, Union

#: the OpenMMLab codebases an mmsgformer config can belong to (their ``default_scope`` names).
CODEBASES = ('mmdet', 'mmseg', 'mmpretrain')
_PREFIX_RE = re.compile(r"""['"](mmdet|mmseg|mmpretrain)::""")
_BASE_RE = re.compile(r"""['"]([^'"]+\.py)['"]""")


def _scan_prefixes(path: str, seen: set) -> List[str]:
    """Codebase prefixes (``mmdet::`` ...) used by ``path`` and its local ``_base_`` files."""
    path = osp.abspath(path)
    if path in seen or not osp.isfile(path):
        return []
    seen.add(path)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    found = _PREFIX_RE.findall(text)
    base_block = re.search(r'^_base_\s*=\s*(\[.*?\]|[^\n]+)', text, re.S | re.M)
    if base_block:
        for rel in _BASE_RE.findall(base_block.group(1)):
            if '::' not in rel:
                found += _scan_prefixes(osp.join(osp.dirname(path), rel), seen)
    return found


def detect_codebase(config: Union[str, Any], default_scope: Optional[str] = None) -> str:
    """The OpenMMLab codebase of a config: ``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``.

    Args:
        config: a config file path, or a loaded ``mmengine.Config`` (its ``default_scope`` and
            ``filename`` are used).
        default_scope: the loaded config's ``default_scope`` when ``config`` is a path.

    ``default_scope`` wins (it must be one of :data:`CODEBASES`); otherwise the
    ``codebase::`` prefixes of the file's ``_base_`` chain decide, and they must name exactly one
    codebase. Raises ``ValueError`` when neither tells.
    """
    if isinstance(config, str):
        path = config
    else:  # an mmengine Config (or anything with .get and .filename)
        path = getattr(config, 'filename', None) or '<config without a file>'
        if default_scope is None:
            default_scope = config.get('default_scope', None)
    if default_scope is not None:
        if default_scope not in CODEBASES:
            raise ValueError(f'default_scope={default_scope!r} of {path} must be one of '
                             f'{CODEBASES}')
        return default_scope
    found = sorted(set(_scan_prefixes(path, set())))
    if len(found) != 1:
        raise ValueError(f'{path}: cannot tell the codebase: it has no default_scope and '
                         f'its _base_ chain uses the prefixes {found}; exactly one of '
                         f'{[c + "::" for c in CODEBASES]} is needed (or set default_scope)')
    return found[0]


def register_codebase(codebase: str) -> None:
    """Register every module of ``codebase`` (one of :data:`CODEBASES`) in its registries, make
    it mmengine's default scope, and register mmsgformer's backbones: what building a config's
    model outside a Runner needs."""
    if codebase not in CODEBASES:
        raise ValueError(f'codebase={codebase!r} must be one of {CODEBASES}')
    from mmengine.registry import init_default_scope
    importlib.import_module(f'{codebase}.utils').register_all_modules(init_default_scope=False)
    init_default_scope(codebase)
    import mmsgformer.models  # noqa: F401  (registers the backbones)


def load_config(config_path: str, cfg_options: Optional[dict] = None) -> Tuple[Any, str]:
    """``Config.fromfile`` + ``--cfg-options`` (merged with ``merge_from_dict``).

    Sets ``cfg.default_scope`` to the detected codebase and imports mmsgformer (backbones +
    checkpoint allow-list). Returns ``(cfg, codebase)``.
    """
    from mmengine.config import Config

    import mmsgformer  # noqa: F401  (registers the backbones, allow-lists checkpoint classes)
    if not osp.isfile(config_path):
        raise ValueError(f'config={config_path!r} is not a file')
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    codebase = detect_codebase(config_path, cfg.get('default_scope', None))
    cfg.default_scope = codebase
    return cfg, codebase
