"""Every config in configs/ loads, states the documented recipe, builds its model with a shrunk
backbone, runs one training step (with the config's own optimizer settings) and one inference.

Run: ``$PY -m pytest tests/test_configs.py -x -q``.
"""
import copy
import functools
import glob
import importlib
import os
import os.path as osp

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs')
CONFIGS = sorted(
    osp.relpath(p, CONFIG_DIR)
    for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if '_base_' not in osp.relpath(p, CONFIG_DIR).split(os.sep))

# Channels of every stage of the real archs, to check the necks/heads of the full configs.
CHANNELS = {
    ('SGFormer', 's'): [64, 128, 256, 512],
    ('SGFormer', 'm'): [64, 128, 256, 512],
    ('SGFormer', 'b'): [96, 192, 384, 768],
    ('FocalTransformer', 't'): [96, 192, 384, 768],
    ('FocalTransformer', 's'): [96, 192, 384, 768],
    ('FocalTransformer', 'b'): [128, 256, 512, 1024],
}
DROP_PATH = {
    ('SGFormer', 's'): 0.1, ('SGFormer', 'm'): 0.2, ('SGFormer', 'b'): 0.4,
    ('FocalTransformer', 't'): 0.2, ('FocalTransformer', 's'): 0.3,
    ('FocalTransformer', 'b'): 0.5,
}
TINY = {
    'SGFormer': (dict(embed_dims=[32, 64, 128, 256], num_heads=[2, 2, 4, 8],
                      depths=[2, 2, 2, 1]), [32, 64, 128, 256]),
    'FocalTransformer': (dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
                         [32, 64, 128, 256]),
}
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


@functools.lru_cache(maxsize=None)
def _load(name):
    from mmengine.config import Config
    import mmsgformer  # noqa: F401
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def load(name):
    """The parsed config (parsed once per session; callers get a copy they may modify)."""
    return copy.deepcopy(_load(name))


def backbone_of(cfg):
    model = cfg.model
    return model.module.backbone if model.type == 'SegTTAModel' else model.backbone


def arch_key(cfg):
    bb = backbone_of(cfg)
    return bb.type, bb.arch


def scheduler(cfg, type_name):
    found = [s for s in cfg.param_scheduler if s['type'] == type_name]
    assert len(found) == 1, cfg.param_scheduler
    return found[0]


def pipeline_types(pipeline):
    return [t['type'] for t in pipeline]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny models on a shared 2-core machine run much faster single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# 1. The recipes the configs promise (no model is built here).

def test_all_families_present():
    names = set(CONFIGS)
    for v in 'smb':
        assert {f'sgformer_{v}_in1k.py', f'sgformer_{v}_in1k-384px.py',
                f'maskrcnn_sgformer_{v}_1x.py', f'maskrcnn_sgformer_{v}_3x.py',
                f'upernet_sgformer_{v}_160k_ade20k.py', f'upernet_sgformer_{v}_160k_ade20k_ms.py',
                f'fpn_sgformer_{v}_80k_ade20k.py'} <= names
    for v in 'tsb':
        assert {f'focal_{v}_in1k.py', f'maskrcnn_focal_{v}_1x.py', f'maskrcnn_focal_{v}_3x.py',
                f'upernet_focal_{v}_160k_ade20k.py', f'upernet_focal_{v}_160k_ade20k_ms.py'} <= names
    assert len(CONFIGS) == 38, CONFIGS  # 21 SG-Former + 15 Focal + 2 demo


@pytest.mark.parametrize('name', [c for c in CONFIGS if c.endswith('_in1k.py')])
def test_imagenet_recipe(name):
    cfg = load(name)
    kind, arch = arch_key(cfg)
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports == dict(imports=['mmsgformer'], allow_failed_imports=False)
    assert cfg.train_cfg.max_epochs == 300
    assert cfg.train_dataloader.batch_size == 128  # x 8 GPUs = 1024
    assert cfg.auto_scale_lr.base_batch_size == 1024
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-3, 0.05)
    pw = cfg.optim_wrapper.paramwise_cfg
    assert pw.norm_decay_mult == 0 and pw.bias_decay_mult == 0
    warm, cos = scheduler(cfg, 'LinearLR'), scheduler(cfg, 'CosineAnnealingLR')
    assert (warm['end'], warm['start_factor'], cos['begin'], cos['eta_min']) == (20, 1e-3, 20, 1e-5)
    assert cfg.model.backbone.drop_path_rate == DROP_PATH[(kind, arch)]
    assert cfg.model.head.in_channels == CHANNELS[(kind, arch)][-1]
    assert cfg.model.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                                       mode='original')
    assert cfg.model.train_cfg.augments == [dict(type='Mixup', alpha=0.8),
                                            dict(type='CutMix', alpha=1.0)]
    train = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
    assert (train['RandAugment']['magnitude_level'], train['RandAugment']['magnitude_std'],
            train['RandAugment']['policies']) == (9, 0.5, 'timm_increasing')
    assert train['RandomErasing']['erase_prob'] == 0.25
    assert train['RandomResizedCrop']['scale'] == 224
    if kind == 'SGFormer':
        assert pw.custom_keys == {'pos_embed': dict(decay_mult=0.0)}
        assert cfg.custom_hooks == [dict(type='EMAHook', momentum=8e-5, update_buffers=True,
                                         priority='ABOVE_NORMAL')]
        test = {t['type']: t for t in cfg.test_dataloader.dataset.pipeline}
        assert (test['ResizeEdge']['scale'], test['CenterCrop']['crop_size']) == (248, 224)
    else:
        assert cfg.optim_wrapper.clip_grad == dict(max_norm=5.0)
        assert 'relative_position_bias_table' in pw.custom_keys


@pytest.mark.parametrize('name', [c for c in CONFIGS if c.endswith('-384px.py')])
def test_imagenet_384_finetune_recipe(name):
    cfg = load(name)
    assert cfg.train_cfg.max_epochs == 30
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 5e-6, 1e-8)
    assert cfg.model.backbone.drop_path_rate == 0.4
    assert cfg.model.backbone.pretrain_img_size == 384
    assert scheduler(cfg, 'CosineAnnealingLR')['end'] == 30
    assert cfg.train_dataloader.dataset.pipeline[1]['scale'] == 384
    assert cfg.load_from == f'checkpoints/sgformer_{cfg.model.backbone.arch}_in1k.pth'


@pytest.mark.parametrize('name', [c for c in CONFIGS if c.startswith('maskrcnn_')])
def test_maskrcnn_recipe(name):
    cfg = load(name)
    kind, arch = arch_key(cfg)
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(imports=['mmsgformer'], allow_failed_imports=False)
    assert cfg.model.neck.in_channels == CHANNELS[(kind, arch)]
    assert cfg.model.backbone.out_indices == (0, 1, 2, 3)
    short = 'sgformer' if kind == 'SGFormer' else 'focal'
    assert cfg.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint=f'checkpoints/{short}_{arch}_in1k_backbone.pth')
    if kind == 'FocalTransformer':
        assert cfg.model.backbone.border_mode == 'masked'
    dp = cfg.model.data_preprocessor
    assert (dp.mean, dp.std, dp.bgr_to_rgb) == (IMAGENET_MEAN, IMAGENET_STD, True)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 0.05)
    pw = cfg.optim_wrapper.paramwise_cfg
    assert pw.norm_decay_mult == 0.0 and pw.custom_keys['pos_embed'] == dict(decay_mult=0.0)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    steps = scheduler(cfg, 'MultiStepLR')
    train = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
    test = {t['type']: t for t in cfg.test_dataloader.dataset.pipeline}
    assert test['Resize']['scale'] == (1333, 800)
    if name.endswith('_1x.py'):
        assert cfg.train_cfg.max_epochs == 12 and steps['milestones'] == [8, 11]
        assert train['Resize']['scale'] == (1333, 800) and 'RandomResize' not in train
    else:
        assert cfg.train_cfg.max_epochs == 36 and steps['milestones'] == [27, 33]
        assert train['RandomResize']['scale'] == [(1333, 480), (1333, 800)]
        assert train['RandomResize']['keep_ratio'] is True and 'Resize' not in train


@pytest.mark.parametrize('name', [c for c in CONFIGS if c.startswith(('upernet_', 'fpn_'))])
def test_ade20k_recipe(name):
    cfg = load(name)
    kind, arch = arch_key(cfg)
    ch = CHANNELS[(kind, arch)]
    assert cfg.default_scope == 'mmseg'
    model = cfg.model.module if cfg.model.type == 'SegTTAModel' else cfg.model
    assert model.backbone.drop_path_rate == DROP_PATH[(kind, arch)]
    assert model.data_preprocessor.size == (512, 512)
    assert model.decode_head.num_classes == 150
    train = pipeline_types(cfg.train_dataloader.dataset.pipeline)
    assert train == ['LoadImageFromFile', 'LoadAnnotations', 'RandomResize', 'RandomCrop',
                     'RandomFlip', 'PhotoMetricDistortion', 'PackSegInputs']
    assert cfg.train_dataloader.dataset.pipeline[3]['crop_size'] == (512, 512)
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
    opt = cfg.optim_wrapper.optimizer
    if name.startswith('upernet_'):
        assert model.decode_head.type == 'UPerHead'
        assert model.decode_head.in_channels == ch
        assert (model.auxiliary_head.type, model.auxiliary_head.in_channels) == ('FCNHead', ch[2])
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 6e-5, 0.01)
        assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
        warm, poly = scheduler(cfg, 'LinearLR'), scheduler(cfg, 'PolyLR')
        assert (warm['end'], poly['begin'], poly['end'], poly['power']) == (1500, 1500, 160000, 1.0)
    else:
        assert model.neck.in_channels == ch and model.decode_head.type == 'FPNHead'
        assert model.pretrained is None
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 1e-4)
        assert cfg.train_cfg.max_iters == 80000
    test = cfg.test_dataloader.dataset.pipeline
    if name.endswith('_ms.py'):
        assert cfg.model.type == 'SegTTAModel'
        scales, flips = test[1]['transforms'][0], test[1]['transforms'][1]
        assert [t['scale_factor'] for t in scales] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
        assert [t['prob'] for t in flips] == [0.0, 1.0]
    else:
        assert pipeline_types(test)[1] == 'Resize' and test[1]['scale'] == (2048, 512)


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


@pytest.mark.parametrize('name', ['upernet_sgformer_s_160k_ade20k_ms.py',
                                  'upernet_focal_t_160k_ade20k_ms.py'])
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


@pytest.mark.parametrize('name,kind', [('maskrcnn_sgformer_s_1x.py', 'SGFormer'),
                                       ('upernet_focal_t_160k_ade20k.py', 'FocalTransformer'),
                                       ('sgformer_s_in1k.py', 'SGFormer')])
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
    if name.startswith('sgformer_'):  # ImageNet recipe: biases too
        assert bb['block1.0.attn.q1.bias'] == 0.0


@pytest.fixture(scope='module')
def synthetic_data(tmp_path_factory):
    import sys
    sys.path.insert(0, osp.join(REPO, 'tools'))
    from make_synthetic_data import make_ade20k
    root = str(tmp_path_factory.mktemp('synthetic'))
    make_ade20k(osp.join(root, 'ade', 'ADEChallengeData2016'), num_train=2, num_val=2, size=96)
    return root
