"""Peak resident memory of a block of code, from Linux's ``/proc/self``.

``VmHWM`` (the process's RSS high-water mark) is reset to the current RSS by writing ``5`` to
``/proc/self/clear_refs``; after the block, ``VmHWM`` minus the RSS read right after the reset is
the block's peak growth. This sees every allocation (torch's, an extension's, malloc's), unlike
``tracemalloc`` or torch's CPU allocator statistics.
"""
import gc
import resource
from types import TracebackType
from typing import Optional, Type


def status_kib(field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``'VmRSS'``, ``'VmHWM'``), None if absent."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where ``/proc/self/clear_refs`` is unavailable."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


class PeakRSS:
    """Context manager: peak RSS of the ``with`` block and its growth over the RSS at entry.

    Example::

        with PeakRSS() as mem:
            model(x).sum().backward()
        print(mem.growth_mib, mem.peak_mib, mem.reset_ok)

    On entry: ``gc.collect()``, reset the high-water mark, then read ``VmRSS`` (``base_kib``).
    On exit: ``peak_kib = max(VmHWM, base_kib)`` (the kernel updates the mark lazily, so it can
    read a few KiB under the baseline). Where the reset is unavailable, ``peak_kib`` is the
    process's lifetime peak (``ru_maxrss``) and ``reset_ok`` is False.
    """

    def __init__(self) -> None:
        self.reset_ok = False
        self.base_kib = 0
        self.peak_kib = 0

    def __enter__(self) -> 'PeakRSS':
        gc.collect()
        # reset first, then read the baseline: VmHWM >= the RSS read after the reset
        self.reset_ok = reset_peak_rss()
        self.base_kib = status_kib('VmRSS') or 0
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        peak = status_kib('VmHWM') if self.reset_ok else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.peak_kib = max(peak, self.base_kib)

    @property
    def base_mib(self) -> float:
        return self.base_kib / 1024

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def growth_mib(self) -> float:
        """Peak growth over the RSS at entry, MiB."""
        return (self.peak_kib - self.base_kib) / 1024
