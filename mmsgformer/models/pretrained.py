"""Pretrained-weight handling shared by the backbones: ``init_cfg`` and checkpoint loading."""
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log


class PretrainedInitMixin:
    """``init_weights`` that understands ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    The backbone provides ``_official_init()`` (its from-scratch init) and may override
    :meth:`_adapt_checkpoint` (drop or reshape checkpoint tensors before the shape check).
    Checkpoints are read with :func:`mmsgformer.checkpoint.read_state_dict`: ``state_dict_ema``
    first, ``module.``/``backbone.`` stripped, ``head.*`` set aside, weights-only by default.
    """

    def _official_init(self) -> None:
        raise NotImplementedError

    def _adapt_checkpoint(self, state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor],
                          checkpoint: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
        """Prepare checkpoint tensors for loading; returns them and extra report entries."""
        return state, {}

    def init_weights(self) -> None:
        """Official init, then the ``Pretrained`` checkpoint of ``init_cfg`` if any."""
        self._official_init()
        cfgs = self.init_cfg
        if cfgs is None:
            cfgs = []
        elif isinstance(cfgs, dict):
            cfgs = [cfgs]
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if len(pretrained) > 1:
            raise ValueError(f'init_cfg has {len(pretrained)} Pretrained entries; give one')
        if others:
            from mmengine.model.weight_init import initialize
            initialize(self, others)
        if pretrained:
            cfg = pretrained[0]
            if 'checkpoint' not in cfg:
                raise ValueError(f"init_cfg={cfg!r} of type 'Pretrained' needs 'checkpoint'")
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'),
                                 map_location=cfg.get('map_location', 'cpu'))
        self._is_init = True

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None,
                        map_location: str = 'cpu', weights_only: bool = True
                        ) -> Dict[str, List[str]]:
        """Load an official (or converted / runner) checkpoint into the backbone.

        Logs the counts and names of loaded, missing and unexpected tensors.

        Raises:
            ValueError: no checkpoint key matches the backbone, or a matching tensor has
                another shape (after :meth:`_adapt_checkpoint`).

        Returns:
            ``{'loaded': [...], 'missing': [...], 'unexpected': [...]}`` plus the entries added
            by :meth:`_adapt_checkpoint`.
        """
        from mmsgformer.checkpoint import read_state_dict
        name = type(self).__name__
        ckpt = read_state_dict(checkpoint, map_location=map_location, prefix=prefix,
                               weights_only=weights_only)
        own = self.state_dict()
        state, extra = self._adapt_checkpoint(dict(ckpt.backbone), own, checkpoint)
        matched = [k for k in state if k in own]
        if not matched:
            raise ValueError(f'checkpoint {checkpoint!r} ({ckpt.source}) matches none of the '
                             f'{len(own)} {name} keys (first checkpoint keys: '
                             f'{list(state)[:5]})')
        for k in matched:
            if state[k].shape != own[k].shape:
                raise ValueError(f'checkpoint {checkpoint!r}: {k} has shape '
                                 f'{tuple(state[k].shape)} but the model expects '
                                 f'{tuple(own[k].shape)}')
        result = self.load_state_dict(state, strict=False)
        report = {'loaded': matched, 'missing': list(result.missing_keys),
                  'unexpected': list(result.unexpected_keys), **extra}
        extras = ''.join(f'; {k} {len(v)}' for k, v in extra.items())
        print_log(f'{name}: loaded {len(matched)}/{len(own)} tensors from {checkpoint} '
                  f"({ckpt.source}); missing {len(report['missing'])}: {report['missing']}; "
                  f"unexpected {len(report['unexpected'])}: {report['unexpected']}{extras}; "
                  f'set aside {len(ckpt.head)} head tensors and dropped {len(ckpt.dropped)} '
                  f'others', logger='current')
        return report
