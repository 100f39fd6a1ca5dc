"""Resolve every config under configs/ and write (or check) its canonical form.

The canonical form of a config is ``pprint.pformat`` of its resolved dict (``Config.fromfile``
with all ``_base_`` files, ``mmdet::`` / ``mmseg::`` / ``mmpretrain::`` included) with the keys
sorted, tuples kept apart from lists and floats written exactly. It depends only on the config
files and the installed codebases, not on where the repository lives: mmengine keeps the file
path on the ``Config`` object (``cfg.filename``), not in the dict, so nothing needs normalising.

Usage::

    python tools/misc/dump_configs.py                 # compare with tests/data/config_dump.txt
    python tools/misc/dump_configs.py --write         # re-freeze the dump (after a real change)

``tests/test_configs.py`` runs the comparison for every config (one test each).
"""
import argparse
import difflib
import glob
import os
import os.path as osp
import pprint
import sys
from typing import Any, Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DUMP = osp.join(REPO, 'tests', 'data', 'config_dump.txt')
HEADER = '### '
_SCALARS = (str, int, float, bool, type(None))


def cache_codebase_lookups() -> None:
    """Look each installed codebase and its metafiles up once per process, not once per base.

    To resolve a ``mmdet::x.py`` base, mmengine checks that mmdet is installed
    (``mmengine.utils.is_installed`` reloads ``pkg_resources``: 0.1 s) and loads mmdet's model
    index and every ``metafile.yml`` (``mmengine.config.utils._get_cfg_metainfo``: 0.5-3 s), for
    every such base. Both answers are fixed for the process (the metafiles are only read), so a
    cache returns the same values. With another mmengine layout nothing changes but the speed.
    """
    import mmengine.config.config as config_module
    import mmengine.config.utils as utils
    if callable(getattr(utils, 'load', None)) and not getattr(utils.load, '_cached', False):
        original_load, files = utils.load, {}

        def load(file, *args, **kwargs):
            metafile = isinstance(file, str) and file.endswith(('.yml', '.yaml'))
            if not metafile or args or kwargs:
                return original_load(file, *args, **kwargs)
            if file not in files:
                files[file] = original_load(file)
            return files[file]

        load._cached = True
        utils.load = load
    installed = getattr(config_module, 'is_installed', None)
    if callable(installed) and not getattr(installed, '_cached', False):
        found = set()

        def is_installed(package: str) -> bool:
            if package not in found and installed(package):
                found.add(package)  # only a positive answer is kept
            return package in found

        is_installed._cached = True
        config_module.is_installed = is_installed


def config_paths(repo: str = REPO) -> List[str]:
    """Every user-facing config (``configs/**/*.py`` outside ``_base_``), repo-relative, sorted."""
    root = osp.join(repo, 'configs')
    paths = glob.glob(osp.join(root, '**', '*.py'), recursive=True)
    rel = (osp.relpath(p, repo).replace(os.sep, '/') for p in paths)
    return sorted(p for p in rel if '_base_' not in p.split('/'))


def _plain(value: Any, where: str) -> Any:
    """``value`` with ConfigDicts turned into dicts; anything but literals is an error."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f'{where}.{k}') for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f'{where}[{i}]') for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_plain(v, f'{where}[{i}]') for i, v in enumerate(value))
    if not isinstance(value, _SCALARS):
        raise ValueError(f'{where}={value!r} is a {type(value).__name__}: the dump holds only '
                         'dicts, lists, tuples, str, int, float, bool and None')
    return value


def canonical(cfg: Any, name: str = 'cfg') -> str:
    """The canonical text of a loaded ``mmengine.Config`` (sorted keys, width 100)."""
    return pprint.pformat(_plain(cfg._cfg_dict.to_dict(), name), width=100, sort_dicts=True)


def resolve(path: str, repo: str = REPO) -> str:
    """The canonical text of the config at repo-relative ``path``."""
    from mmengine.config import Config
    return canonical(Config.fromfile(osp.join(repo, path)), path)


def read_dump(dump: str = DUMP) -> Dict[str, str]:
    """``{repo-relative config path: canonical text}`` from a dump file."""
    entries: Dict[str, str] = {}
    name: Optional[str] = None
    lines: List[str] = []
    with open(dump, encoding='utf-8') as f:
        for line in f.read().splitlines():
            if line.startswith(HEADER):
                if name is not None:
                    entries[name] = '\n'.join(lines).strip('\n')
                name, lines = line[len(HEADER):], []
            elif name is not None:
                lines.append(line)
    if name is not None:
        entries[name] = '\n'.join(lines).strip('\n')
    return entries


def write_dump(entries: Dict[str, str], dump: str = DUMP) -> None:
    with open(dump, 'w', encoding='utf-8') as f:
        f.write('# Frozen resolved configs: tools/misc/dump_configs.py --write; checked by '
                'tests/test_configs.py\n')
        for name in sorted(entries):
            f.write(f'\n{HEADER}{name}\n{entries[name]}\n')


def frozen_text(path: str, frozen: Dict[str, str]) -> Optional[str]:
    """The frozen text for ``path``; a family config (``configs/sgformer/X.py``) that was frozen
    under its top-level alias (``configs/X.py``, which inherits it) is looked up by that."""
    if path in frozen:
        return frozen[path]
    return frozen.get('configs/' + path.rsplit('/', 1)[-1])


def diff(expected: str, actual: str, name: str) -> str:
    """A unified diff of two canonical texts ('' when equal)."""
    return '\n'.join(difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                          f'{name} (frozen)', f'{name} (now)', lineterm=''))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--write', action='store_true', help='re-freeze the dump')
    parser.add_argument('--dump', default=DUMP, help='dump file (default: %(default)s)')
    args = parser.parse_args(argv)
    import mmsgformer  # noqa: F401  (the configs' custom_imports)
    cache_codebase_lookups()
    current = {p: resolve(p) for p in config_paths()}
    if args.write:
        write_dump(current, args.dump)
        print(f'wrote {len(current)} configs to {args.dump}')
        return 0
    frozen = read_dump(args.dump)
    bad = [f'MISSING  {name}: frozen, but no longer a config'
           for name in sorted(set(frozen) - set(current))]
    for name, text in current.items():
        expected = frozen_text(name, frozen)
        if expected is None:
            bad.append(f'NEW      {name}: not in the dump')
        elif expected != text:
            bad.append(diff(expected, text, name))
    print('\n'.join(bad + [f'{len(current) - len(bad)} of {len(current)} configs resolve as '
                           f'frozen in {args.dump}']))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
