"""Building a config's model for inference or export: no downloads, checked checkpoints."""
import copy
from typing import Any, Optional, Tuple

__all__ = ['drop_pretrained', 'checkpoint_fit', 'check_checkpoint_fits', 'build_model',
           'plain_paths', 'MIN_FIT']

#: A checkpoint fits a model when at least this share of the model's state-dict tensors is in
#: it with the same name and shape (a backbone-only or another model's checkpoint falls far
#: below, a full checkpoint of the same model is at 1.0).
MIN_FIT = 0.9


def drop_pretrained(model_cfg: Any) -> Any:
    """Copy of a model config with every ``init_cfg`` / ``pretrained`` entry set to None.

    The packaged configs point at pretrained weights on the internet (or at
    ``checkpoints/*_backbone.pth``); for inference from a full checkpoint or with random weights
    nothing must be loaded or downloaded.
    """
    model_cfg = copy.deepcopy(model_cfg)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in list(node):
                if key in ('init_cfg', 'pretrained'):
                    node[key] = None
                else:
                    walk(node[key])
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(model_cfg)
    return model_cfg


def checkpoint_fit(model, checkpoint: str) -> Tuple[int, int]:
    """``(matching, total)``: how many of ``model``'s state-dict tensors the file
    ``checkpoint`` holds under the same name with the same shape (``state_dict`` of a runner
    checkpoint, ``module.`` prefixes stripped).

    Raises:
        ValueError: naming the file, when it cannot be loaded or holds no state dict.
    """
    from mmengine.runner.checkpoint import _load_checkpoint
    try:
        ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    except Exception as exc:
        raise ValueError(f'{checkpoint}: cannot load the checkpoint ({exc})') from exc
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f'{checkpoint}: holds no state dict')
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    match = sum(1 for k, v in own.items()
                if k in state and getattr(state[k], 'shape', None) == v.shape)
    return match, len(own)


def check_checkpoint_fits(model, checkpoint: str, config: str) -> None:
    """ValueError naming both files when ``checkpoint`` is not a checkpoint of ``model``
    (fewer than :data:`MIN_FIT` of its tensors match)."""
    match, total = checkpoint_fit(model, checkpoint)
    if match < MIN_FIT * total:
        raise ValueError(f'{checkpoint}: does not fit the model of {config}: only {match} of '
                         f'its {total} tensors are in it with the right shape (a checkpoint of '
                         'another model, or backbone-only weights?)')


def build_model(cfg, codebase: str, checkpoint: Optional[str] = None, config: str = 'the config'):
    """The config's model in eval mode, random weights (no ``init_cfg`` loading) or
    ``checkpoint`` (checked with :func:`check_checkpoint_fits`).

    Args:
        cfg: loaded mmengine Config with ``model``.
        codebase: ``'mmpretrain'``, ``'mmdet'`` or ``'mmseg'`` (registers its modules).
        checkpoint: full-model checkpoint of this config, or None.
        config: the config's name for error messages.
    """
    import importlib

    from mmengine.registry import MODELS, init_default_scope
    importlib.import_module(f'{codebase}.utils').register_all_modules(init_default_scope=False)
    init_default_scope(codebase)
    model = MODELS.build(drop_pretrained(cfg.model))
    if checkpoint is not None:
        from mmengine.runner import load_checkpoint
        check_checkpoint_fits(model, checkpoint, config)
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    return model.eval()


def plain_paths(model) -> int:
    """Switch every module of ``model`` that has fast paths (``set_fast_path``, the SG-Former
    backbone) to its plain path; returns how many were switched.

    For an export with symbolic sizes: in inference the fast attention picks query chunks from
    the input size in Python (``Bt * g * Nq * Nk <= 2**24`` scores, ``fast_paths._chunks``). One
    graph for every size cannot branch on the size, and ``torch.export`` cannot even decide that
    test: the sizes are nested floor divisions of H and W (``((H - 1) // 4 + 1) // 8`` ...), an
    inequality sympy does not solve. The plain path computes the same attention unchunked (what
    the fast path does below the threshold, e.g. at 224).
    """
    switched = 0
    for module in model.modules():
        if callable(getattr(module, 'set_fast_path', None)):
            module.set_fast_path(False)
            switched += 1
    return switched
