"""The paper's figures that the configs of this repository are meant to reproduce.

One table, used by ``tools/collect_results.py`` (paper vs. ours) and mirrored by the results table
of ``docs/training.md`` §4. The figures are "as cited": the official repository has no detection or
segmentation code, and the S/M/B rows come from later papers' comparison tables (ImageNet: MambaOut
for S/M, RMT for B, B's 84.7 also in the paper's abstract; COCO and ADE20K: MambaOut; the B COCO
3x box AP only from the abstract).

Each metric names the mmengine evaluation key it is read from and the factor that turns the
logged value into the paper's unit (mmdet logs COCO AP in [0, 1], mmseg and mmpretrain log
percentages).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ['PaperMetric', 'PaperRow', 'PAPER_RESULTS', 'find_row']


@dataclass(frozen=True)
class PaperMetric:
    """One cited number and where a run logs it.

    Attributes:
        label: column label, e.g. ``'APb'`` or ``'mIoU MS'``.
        key: evaluation key in the runner's logs, e.g. ``'coco/bbox_mAP'``.
        config: config name (file stem in ``configs/``) whose run produces the number.
        paper: the cited value, or None when the papers give none.
        scale: logged value times ``scale`` is in the paper's unit.
    """

    label: str
    key: str
    config: str
    paper: Optional[float]
    scale: float = 1.0


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper-vs-ours table: a task, a model and its metrics."""

    task: str
    model: str
    metrics: Tuple[PaperMetric, ...]

    @property
    def configs(self) -> Tuple[str, ...]:
        """The config names of the row's runs, in metric order, without repeats."""
        return tuple(dict.fromkeys(m.config for m in self.metrics))


def _cls(size: str, top1: float) -> PaperRow:
    cfg = f'sgformer_{size}_in1k'
    return PaperRow('ImageNet-1k 224', f'SG-Former-{size.upper()}',
                    (PaperMetric('top-1', 'accuracy/top1', cfg, top1),))


def _det(size: str, schedule: str, box: float, mask: Optional[float]) -> PaperRow:
    cfg = f'maskrcnn_sgformer_{size}_{schedule}'
    return PaperRow(f'COCO Mask R-CNN {schedule}', f'SG-Former-{size.upper()}',
                    (PaperMetric('APb', 'coco/bbox_mAP', cfg, box, 100.0),
                     PaperMetric('APm', 'coco/segm_mAP', cfg, mask, 100.0)))


def _seg(size: str, ss: float, ms: float) -> PaperRow:
    cfg = f'upernet_sgformer_{size}_160k_ade20k'
    return PaperRow('ADE20K UperNet 160k', f'SG-Former-{size.upper()}',
                    (PaperMetric('mIoU SS', 'mIoU', cfg, ss),
                     PaperMetric('mIoU MS', 'mIoU', cfg + '_ms', ms)))


#: The rows of docs/training.md §4, in its order.
PAPER_RESULTS: Tuple[PaperRow, ...] = (
    _cls('s', 83.2), _cls('m', 84.1), _cls('b', 84.7),
    _det('s', '1x', 47.4, 42.6), _det('m', '1x', 48.2, 43.6), _det('b', '3x', 51.2, None),
    _seg('s', 49.9, 51.5), _seg('m', 51.2, 52.1), _seg('b', 52.0, 52.7),
)


def find_row(config: str, rows: Tuple[PaperRow, ...] = PAPER_RESULTS) -> Optional[PaperRow]:
    """The row one of whose metrics is produced by ``config`` (a config file stem), or None."""
    for row in rows:
        if config in row.configs:
            return row
    return None
