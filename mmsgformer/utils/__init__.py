"""What the scripts under ``tools/`` share: config loading, codebase detection, launcher options
and ``/proc`` memory readings.

* :func:`detect_codebase` is the one place that decides whether a config belongs to mmdet,
  mmsegmentation or mmpretrain (``default_scope`` first, else the ``codebase::`` prefixes of its
  ``_base_`` chain); :func:`load_config` loads a config, merges ``--cfg-options`` and sets
  ``default_scope`` to that codebase; :func:`register_codebase` registers a codebase's modules
  and makes it the default scope (to build a config's model outside a Runner).
* :func:`add_launcher_args` / :func:`parse_with_launcher`, :func:`apply_launcher_and_work_dir`
  and :func:`adapt_for_cpu_distributed`: the launcher handling of ``tools/train.py`` and
  ``tools/test.py``.
* :class:`PeakRSS`, :func:`status_kib`, :func:`reset_peak_rss`: peak resident memory of a block
  of code, read from ``/proc/self/status`` after resetting the high-water mark.

Nothing here imports mmdet, mmsegmentation or mmpretrain at module import time.
"""
from .config import CODEBASES, detect_codebase, load_config, register_codebase
from .launcher import (adapt_for_cpu_distributed, add_launcher_args,
                       apply_launcher_and_work_dir, parse_with_launcher)
from .proc_memory import PeakRSS, reset_peak_rss, status_kib

__all__ = ['CODEBASES', 'detect_codebase', 'load_config', 'register_codebase', 'add_launcher_args',
           'parse_with_launcher', 'apply_launcher_and_work_dir', 'adapt_for_cpu_distributed',
           'PeakRSS', 'status_kib', 'reset_peak_rss']
