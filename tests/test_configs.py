"""Every config in configs/ resolves exactly to its frozen dump (tests/data/config_dump.txt),
builds its model with a shrunk backbone, runs one training step (with the config's own optimizer
settings) and one inference; the mim model index lists every model.

Run: ``$PY -m pytest tests/test_configs.py -x -q``. After a deliberate change of a config:
``$PY tools/misc/dump_configs.py --write`` and review the diff of the dump.
"""
import copy
import functools
import importlib
import importlib.util
import os.path as osp

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs')
FAMILIES = ('sgformer', 'focal')


def _load_dump_tool():
    spec = importlib.util.spec_from_file_location(
        'dump_configs', osp.join(REPO, 'tools', 'misc', 'dump_configs.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DUMP = _load_dump_tool()
ALL = [p[len('configs/'):] for p in DUMP.config_paths()]  # e.g. 'sgformer/sgformer_s_in1k.py'
ALIASES = [p for p in ALL if '/' not in p]  # the top-level paths: one-line aliases
# the configs that are built: each family config once (an alias resolves to the same dict) + demo
CONFIGS = [p for p in ALL if p.split('/')[0] in FAMILIES + ('demo', )]
TINY = {
    'SGFormer': (dict(embed_dims=[32, 64, 128, 256], num_heads=[2, 2, 4, 8],
                      depths=[2, 2, 2, 1]), [32, 64, 128, 256]),
    'FocalTransformer': (dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
                         [32, 64, 128, 256]),
}


@functools.lru_cache(maxsize=None)
def _load(name):
    from mmengine.config import Config
    import mmsgformer  # noqa: F401
    DUMP.cache_codebase_lookups()  # else mmengine re-reads every metafile for every base
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def load(name):
    """The parsed config (parsed once per session; callers get a copy they may modify)."""
    return copy.deepcopy(_load(name))


@functools.lru_cache(maxsize=None)
def frozen():
    return DUMP.read_dump()


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny models on a shared 2-core machine run much faster single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# 1. Every config resolves as frozen; the layout rules hold.

@pytest.mark.parametrize('name', ALL)
def test_resolves_as_frozen(name):
    """The resolved dict is the frozen one (aliases and family configs share an entry)."""
    expected = DUMP.frozen_text('configs/' + name, frozen())
    assert expected is not None, f'configs/{name} is not in the dump'
    actual = DUMP.canonical(_load(name), name)
    assert actual == expected, DUMP.diff(expected, actual, name)


def test_every_frozen_config_still_exists():
    missing = sorted(set(frozen()) - {'configs/' + p for p in ALL})
    assert not missing, f'frozen configs that no longer exist: {missing}'
    assert len(ALIASES) == 36 and len(CONFIGS) == 38  # 21 SG-Former + 15 Focal (+ 2 demo)


@pytest.mark.parametrize('name', ALIASES)
def test_top_level_path_is_an_alias(name):
    """configs/X.py is one line that inherits configs/<family>/X.py (same work_dirs/X)."""
    with open(osp.join(CONFIG_DIR, name), encoding='utf-8') as f:
        lines = f.read().splitlines()
    family = 'focal' if 'focal_' in name else 'sgformer'
    assert len(lines) == 1 and lines[0].startswith(f"_base_ = './{family}/{name}'"), lines
    assert f'{family}/{name}' in CONFIGS


def test_base_files_name_no_backbone():
    """_base_/ holds data and schedules: the backbones are spelled out by the family configs."""
    import glob
    for path in glob.glob(osp.join(CONFIG_DIR, '_base_', '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            text = f.read()
        assert 'SGFormer' not in text and 'FocalTransformer' not in text, path


def test_model_index_lists_every_family_config():
    """The mim model index: every family config (not the demos) is one model, each Config exists,
    and mim's own search table (``mim search mmsgformer`` on an installed package) lists them all
    with their parameters, FLOPs and the paper's metrics where cited."""
    load_index = pytest.importorskip('modelindex.load_model_index').load
    search = pytest.importorskip('mim.commands.search')
    index = load_index(osp.join(REPO, 'model-index.yml'))
    models = {m.name: m for m in index.models}
    assert len(models) == len(index.models) == 36
    family_configs = sorted('configs/' + p for p in CONFIGS if not p.startswith('demo/'))
    assert sorted(m.config for m in models.values()) == family_configs
    for m in models.values():
        assert m.in_collection in ('SG-Former', 'Focal Transformer'), m.name
        assert m.weights is None, m.name  # no checkpoint exists to link
        assert m.metadata.parameters > 2e7 and m.metadata.flops > 4e9, m.name
    table = search.convert2df(index)
    assert sorted(table.index) == sorted(models)
    row = table.loc['sgformer-s_in1k']
    assert (row['config'], row['parameters'], row['flops']) == (
        'configs/sgformer/sgformer_s_in1k.py', 22550000, 4818000000)
    assert row['imagenet-1k/top_1_accuracy'] == 83.2
    assert table.loc['upernet_sgformer-b_160k_ade20k_ms']['ade20k/miou(ms+flip)'] == 52.7
    assert table.loc['mask-rcnn_sgformer-s_fpn_1x_coco']['coco/mask_ap'] == 42.6


# ------------------------------------------------------------------------------------------------
# 2. Build (shrunk), one training step, one inference.

def shrink(cfg):
    """Tiny backbone, no pretrained weights, small crops; necks/heads follow the channels."""
    model = cfg.model.module if cfg.model.type == 'SegTTAModel' else cfg.model
    arch, ch = TINY[model.backbone.type]
    model.backbone.arch = arch
    model.backbone.init_cfg = None
    # no stochastic depth: with batch 1 a dropped branch would get no gradient in the one step
    model.backbone.drop_path_rate = 0.0
    if model.backbone.type == 'SGFormer' and model.backbone.get('pretrain_img_size', 224) > 224:
        model.backbone.pretrain_img_size = 64
    cfg.load_from = None
    if 'neck' in model and 'in_channels' in model.neck:
        model.neck.in_channels = ch
    if 'head' in model:  # classifier
        model.head.in_channels = ch[-1]
    if 'decode_head' in model:
        model.data_preprocessor.size = (64, 64)
        if model.decode_head.type == 'UPerHead':
            model.decode_head.in_channels = ch
            model.decode_head.channels = 32
            model.auxiliary_head.in_channels = ch[2]
            model.auxiliary_head.channels = 16
    if 'roi_head' in model:  # Mask R-CNN: narrow FPN/heads and few proposals for speed
        model.neck.out_channels = 32
        model.rpn_head.in_channels = model.rpn_head.feat_channels = 32
        roi = model.roi_head
        roi.bbox_roi_extractor.out_channels = roi.mask_roi_extractor.out_channels = 32
        roi.bbox_head.in_channels = roi.mask_head.in_channels = 32
        roi.bbox_head.fc_out_channels = 64
        roi.mask_head.conv_out_channels = 16
        model.train_cfg.rpn_proposal.max_per_img = 64
        model.train_cfg.rcnn.sampler.num = 32
        model.test_cfg.rpn.max_per_img = 32
        model.test_cfg.rcnn.max_per_img = 8
        model.test_cfg.rcnn.score_thr = 0.0  # random weights: exercise boxes and masks
    return cfg, model


def build(cfg, model_cfg):
    from mmengine.registry import init_default_scope
    scope = cfg.default_scope
    init_default_scope(scope)
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    registry = importlib.import_module(f'{scope}.registry')
    if cfg.get('data_preprocessor') is not None and model_cfg.type != 'SegTTAModel':
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)  # as the Runner does
    model = registry.MODELS.build(model_cfg)
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # init_weights logs one line per parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def fake_batch(scope, size=64, batch=2):
    """A batch of ``batch`` random uint8 images with random targets of the codebase."""
    torch.manual_seed(0)
    imgs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(batch)]
    if scope == 'mmpretrain':
        from mmpretrain.structures import DataSample
        return dict(inputs=imgs, data_samples=[DataSample().set_gt_label(3 + i)
                                               for i in range(batch)])
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch_size=batch, image_shapes=[(3, size, size)] * batch,
                              num_items=[2] * batch, num_classes=3, with_mask=True)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, size, size)))
        samples.append(sample)
    return dict(inputs=imgs, data_samples=samples)


def train_and_infer(cfg, model_cfg, size):
    from mmengine.optim import build_optim_wrapper
    model = build(cfg, model_cfg)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    losses = model.train_step(fake_batch(cfg.default_scope, size), optim)
    total = sum(v for k, v in losses.items() if k.startswith('loss'))
    assert torch.isfinite(total) and total > 0, losses
    changed = [n for n, p in model.backbone.named_parameters()
               if not torch.equal(p.detach(), before[n])]
    assert len(changed) > 0.9 * len(before), sorted(set(before) - set(changed))
    model.eval()
    with torch.no_grad():
        preds = model.test_step(fake_batch(cfg.default_scope, size, batch=1))
    return model, optim, losses, preds


@pytest.mark.parametrize('name', [c for c in CONFIGS if not c.endswith('_ms.py')])
def test_build_train_step_and_inference(name):
    cfg, model_cfg = shrink(load(name))
    scope = cfg.default_scope
    size = 96 if scope == 'mmdet' else 64
    model, optim, losses, preds = train_and_infer(cfg, model_cfg, size)
    assert len(preds) == 1
    if scope == 'mmpretrain':
        assert set(losses) == {'loss'}
        score = preds[0].pred_score
        assert score.shape == (1000, ) and abs(float(score.sum()) - 1) < 1e-4
    elif scope == 'mmdet':
        assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
        inst = preds[0].pred_instances
        n = len(inst)
        assert n > 0 and inst.bboxes.shape == (n, 4) and inst.masks.shape == (n, size, size)
        assert inst.scores.min() >= 0 and inst.labels.max() < model.roi_head.bbox_head.num_classes
    else:
        assert {'decode.loss_ce', 'decode.acc_seg'} <= set(losses)
        if 'auxiliary_head' in model_cfg:
            assert 'aux.loss_ce' in losses
        assert preds[0].pred_sem_seg.data.shape == (1, size, size)
        assert int(preds[0].pred_sem_seg.data.max()) < model.decode_head.num_classes


@pytest.mark.parametrize('name', ['sgformer/upernet_sgformer_s_160k_ade20k_ms.py',
                                  'focal/upernet_focal_t_160k_ade20k_ms.py'])
def test_multiscale_flip_test(name, synthetic_data):
    """The _ms configs run the real 12-view TTA pipeline (6 scales x 2 flips) on an image."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS
    cfg, _ = shrink(load(name))
    model = build(cfg, cfg.model)
    ds_cfg = cfg.test_dataloader.dataset
    ds_cfg.data_root = osp.join(synthetic_data, 'ade', 'ADEChallengeData2016')
    dataset = DATASETS.build(ds_cfg)
    views = dataset[0]
    assert len(views['inputs']) == 12
    sizes = sorted({tuple(v.shape[1:]) for v in views['inputs']})
    assert sizes == [(48, 48), (72, 72), (96, 96), (120, 120), (144, 144), (168, 168)]
    model.eval()
    with torch.no_grad():
        preds = model.test_step(pseudo_collate([views]))
    assert len(preds) == 1 and preds[0].pred_sem_seg.data.shape == (1, 96, 96)


@pytest.mark.parametrize('name,kind', [
    ('sgformer/maskrcnn_sgformer_s_1x.py', 'SGFormer'),
    ('focal/upernet_focal_t_160k_ade20k.py', 'FocalTransformer'),
    ('sgformer/sgformer_s_in1k.py', 'SGFormer'),
])
def test_no_weight_decay_groups(name, kind):
    """Norms (LayerNorm and the GroupNorms named *.bn), biases and position tables get weight
    decay 0; linear/conv weights keep the config's decay."""
    from mmengine.optim import build_optim_wrapper
    cfg, model_cfg = shrink(load(name))
    model = build(cfg, model_cfg)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    wd = cfg.optim_wrapper.optimizer.weight_decay
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optim.optimizer.param_groups:
        for p in group['params']:
            decay[names[id(p)]] = group['weight_decay']
    bb = {n[len('backbone.'):]: d for n, d in decay.items() if n.startswith('backbone.')}
    if kind == 'SGFormer':
        assert bb['pos_embed'] == 0.0
        assert bb['norm1.weight'] == 0.0 and bb['block1.0.norm1.weight'] == 0.0
        assert bb['patch_embed1.conv.0.bn.weight'] == 0.0  # a GroupNorm
        assert bb['block1.0.attn.q1.weight'] == wd and bb['block1.0.mlp.fc1.weight'] == wd
    else:
        tables = [n for n in bb if 'relative_position_bias_table' in n]
        assert tables and all(bb[n] == 0.0 for n in tables)
        assert bb['layers.0.blocks.0.norm1.weight'] == 0.0
        assert bb['layers.0.blocks.0.attn.qkv.weight'] == wd
    if name.startswith('sgformer/sgformer_'):  # ImageNet recipe: biases too
        assert bb['block1.0.attn.q1.bias'] == 0.0


@pytest.fixture(scope='module')
def synthetic_data(tmp_path_factory):
    from mmsgformer.utils.synthetic_data import make_ade20k
    root = str(tmp_path_factory.mktemp('synthetic'))
    make_ade20k(osp.join(root, 'ade', 'ADEChallengeData2016'), num_train=2, num_val=2, size=96)
    return root
