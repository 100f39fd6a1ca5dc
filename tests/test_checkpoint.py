"""Tests of official-checkpoint reading, SGFormer pretrained loading and the converter."""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from mmsgformer.checkpoint import (load_file, read_state_dict, select_state_dict,
                                   split_state_dict)
from mmsgformer.models import SGFormer
from official_sgformer import (TINY, make_official_state_dict, official_forward,
                               save_official_checkpoint)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _converter():
    spec = importlib.util.spec_from_file_location(
        'convert_official',
        os.path.join(REPO, 'tools', 'model_converters', 'convert_official.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class NotAllowListed:
    """A class torch's weights-only unpickler must refuse."""

    def __init__(self):
        self.value = 3


@pytest.fixture(scope='module')
def official_file(tmp_path_factory):
    """A synthetic official training checkpoint: EMA and raw weights differ."""
    ema = make_official_state_dict(TINY['embed_dims'], TINY['num_heads'], TINY['depths'], seed=11)
    raw = make_official_state_dict(TINY['embed_dims'], TINY['num_heads'], TINY['depths'], seed=12)
    ema = OrderedDict((k, v.float()) for k, v in ema.items())
    raw = OrderedDict((k, v.float()) for k, v in raw.items())
    path = str(tmp_path_factory.mktemp('ckpt') / 'sgformer_tiny_official.pth')
    save_official_checkpoint(path, raw, ema)
    return path, ema, raw


# --------------------------------------------------------------------------- reading
def test_select_priority():
    t = {'a': torch.zeros(1)}
    e = {'a': torch.ones(1)}
    m = {'a': torch.full((1, ), 2.)}
    assert select_state_dict({'state_dict': t, 'state_dict_ema': e, 'model': m})[1] == \
        'state_dict_ema'
    assert select_state_dict({'state_dict': t, 'model': m})[1] == 'state_dict'
    assert select_state_dict({'model': m, 'epoch': 3})[1] == 'model'
    sd, src = select_state_dict({'a': torch.ones(2)})
    assert src == 'bare dict' and torch.equal(sd['a'], torch.ones(2))
    with pytest.raises(ValueError, match="'x.pth' has no state dict"):
        select_state_dict({'state_dict': {}, 'epoch': 1}, 'x.pth')
    with pytest.raises(ValueError, match='not a dict'):
        select_state_dict([1, 2], 'y.pth')


def test_split_strips_prefixes_and_sets_head_aside():
    w = torch.ones(1)
    bb, head, dropped = split_state_dict({'module.pos_embed': w, 'module.head.weight': w,
                                          'module.head.bias': w, 'module.norm4.weight': w})
    assert sorted(bb) == ['norm4.weight', 'pos_embed']
    assert sorted(head) == ['bias', 'weight'] and dropped == []
    bb, head, dropped = split_state_dict({'backbone.pos_embed': w, 'neck.x': w,
                                          'head.fc.weight': w, 'data_preprocessor.mean': w})
    assert list(bb) == ['pos_embed'] and list(head) == ['fc.weight']
    assert sorted(dropped) == ['data_preprocessor.mean', 'neck.x']
    # Focal-style official keys: everything but head.* is backbone (including norm.*)
    bb, head, _ = split_state_dict({'layers.0.blocks.0.attn.qkv.weight': w, 'norm.weight': w,
                                    'head.weight': w})
    assert sorted(bb) == ['layers.0.blocks.0.attn.qkv.weight', 'norm.weight']
    # explicit prefix
    bb, _, dropped = split_state_dict({'encoder.a': w, 'b': w}, prefix='encoder.')
    assert list(bb) == ['a'] and dropped == ['b']


def test_weights_only_loading_is_safe(tmp_path, official_file):
    path, ema, _ = official_file
    ckpt = load_file(path)  # argparse.Namespace is allow-listed, weights_only=True
    assert isinstance(ckpt['args'], argparse.Namespace)
    content = read_state_dict(path)
    assert content.source == 'state_dict_ema'
    assert torch.equal(content.backbone['block1.1.attn.f1.weight'],
                       ema['block1.1.attn.f1.weight'])
    assert sorted(content.head) == ['bias', 'weight']
    assert content.meta['epoch'] == 299 and content.meta['arch'] == 'sgformer_s'
    bad = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'a': torch.ones(1)}, 'obj': NotAllowListed()}, bad)
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only=True"):
        load_file(bad)
    assert load_file(bad, weights_only=False)['obj'].value == 3  # explicit opt-in only
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_file(str(tmp_path / 'nope.pth'))


# --------------------------------------------------------------------------- SGFormer loading
def test_init_cfg_pretrained_loads_ema_weights(official_file):
    path, ema, raw = official_file
    model = SGFormer(arch=dict(TINY), sga_impl='reference',
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    sd = model.state_dict()
    for k in sd:
        assert torch.equal(sd[k], ema[k]), k
    assert not torch.equal(sd['block2.0.attn.q1.weight'], raw['block2.0.attn.q1.weight'])
    # an official checkpoint minus head.* loads strictly
    strict = SGFormer(arch=dict(TINY), sga_impl='reference')
    strict.load_state_dict({k: v for k, v in ema.items() if not k.startswith('head.')},
                           strict=True)


def test_pretrained_resizes_pos_embed_and_reports(official_file):
    path, ema, _ = official_file
    model = SGFormer(arch=dict(TINY), sga_impl='reference', pretrain_img_size=(256, 192))
    report = model.load_pretrained(path)
    assert report['missing'] == [] and report['unexpected'] == []
    assert len(report['loaded']) == len(model.state_dict())
    grid = ema['pos_embed'].reshape(1, 56, 56, 16).permute(0, 3, 1, 2)
    exp = torch.nn.functional.interpolate(grid, size=(64, 48), mode='bicubic',
                                          align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(model.pos_embed.detach(), exp, atol=1e-6)
    assert torch.equal(model.state_dict()['norm3.weight'], ema['norm3.weight'])


def test_pretrained_partial_and_runner_style(tmp_path, official_file):
    _, ema, _ = official_file
    # an OpenMMLab runner checkpoint of a classifier, missing one stage-4 tensor
    state = {f'backbone.{k}': v for k, v in ema.items() if not k.startswith('head.')}
    del state['backbone.norm4.bias']
    state['head.fc.weight'] = ema['head.weight']
    path = str(tmp_path / 'runner.pth')
    torch.save({'meta': {'epoch': 1}, 'state_dict': state}, path)
    model = SGFormer(arch=dict(TINY), sga_impl='reference')
    model.init_weights()
    report = model.load_pretrained(path)
    assert report['missing'] == ['norm4.bias'] and report['unexpected'] == []
    assert torch.all(model.norm4.bias == 0)  # keeps the official init
    assert torch.equal(model.norm4.weight.detach(), ema['norm4.weight'])


def test_pretrained_errors(tmp_path, official_file):
    _, ema, _ = official_file
    nomatch = str(tmp_path / 'resnet.pth')
    torch.save({'state_dict': {'conv1.weight': torch.ones(3), 'fc.weight': torch.ones(2)}},
               nomatch)
    model = SGFormer(arch=dict(TINY), sga_impl='reference',
                     init_cfg=dict(type='Pretrained', checkpoint=nomatch))
    with pytest.raises(ValueError, match=r'resnet\.pth.*matches none'):
        model.init_weights()
    wrong = dict(ema)
    wrong['block1.0.attn.q1.weight'] = torch.zeros(4, 16)
    path = str(tmp_path / 'wrong.pth')
    save_official_checkpoint(path, wrong)
    with pytest.raises(ValueError, match=r'block1\.0\.attn\.q1\.weight has shape \(4, 16\) but '
                                         r'the model expects \(8, 16\)'):
        SGFormer(arch=dict(TINY), sga_impl='reference').load_pretrained(path)
    other = SGFormer(arch=dict(TINY, embed_dims=[32, 32, 64, 64]), sga_impl='reference')
    with pytest.raises(ValueError, match='pos_embed|patch_embed1'):
        other.load_pretrained(path)


# --------------------------------------------------------------------------- converter
def test_convert_classifier_gives_official_logits(tmp_path, official_file):
    path, ema, _ = official_file
    conv = _converter()
    dst = str(tmp_path / 'cls.pth')
    status = conv.main([path, dst, '--format', 'classifier', '--model', 'sgformer',
                        '--arch', '{"embed_dims": [16, 32, 64, 64], "num_heads": [2, 2, 4, 4], '
                        '"depths": [2, 2, 2, 1]}', '--strict'])
    assert status == 0
    saved = torch.load(dst, weights_only=True)
    assert set(saved) == {'state_dict', 'meta'}
    assert saved['meta']['weights'] == 'state_dict_ema'
    assert sorted(k for k in saved['state_dict'] if not k.startswith('backbone.')) == \
        ['head.fc.bias', 'head.fc.weight']

    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS
    clf = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='SGFormer', arch=dict(TINY), out_indices=(3, ),
                      sga_impl='reference'),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=64)))
    load_checkpoint(clf, dst, map_location='cpu', strict=True)
    clf = clf.double().eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        logits = clf(x, mode='tensor')
        sd64 = {k: v.double() for k, v in ema.items()}
        _, ref = official_forward(sd64, x, TINY['num_heads'], TINY['depths'])
    assert logits.shape == (2, 10)
    assert (logits - ref).abs().max().item() < 1e-8
    assert ref.abs().max().item() > 0.1


def test_convert_backbone_format_and_validation(tmp_path, official_file, capsys):
    path, ema, _ = official_file
    conv = _converter()
    dst = str(tmp_path / 'bb.pth')
    # no --arch: the best zoo arch (S) is reported with its key differences; --strict fails
    status = conv.main([path, dst, '--format', 'backbone', '--model', 'sgformer', '--strict'])
    out = capsys.readouterr().out
    assert status == 2
    assert re.search(r'validated against SGFormer\(arch=s\): missing [1-9]\d*, '
                     r'unexpected 0, shape mismatches [1-9]\d*', out)
    assert 'mismatched: patch_embed1.conv.0.c.weight' in out
    saved = torch.load(dst, weights_only=True)
    assert set(saved) == {k for k in ema if not k.startswith('head.')}
    model = SGFormer(arch=dict(TINY), sga_impl='reference')
    model.load_state_dict(saved, strict=True)
    assert torch.equal(model.block2[1].attn.f2.weight.detach(), ema['block2.1.attn.f2.weight'])


def test_convert_generic_focal_style_keys(tmp_path):
    w = torch.randn(4, 4)
    src = str(tmp_path / 'focal.pth')
    torch.save({'model': {'module.layers.0.blocks.0.attn.qkv.weight': w,
                          'module.norm.weight': w[0], 'module.head.weight': w,
                          'module.head.bias': w[0]}, 'args': argparse.Namespace(a=1)}, src)
    conv = _converter()
    dst = str(tmp_path / 'focal_cls.pth')
    assert conv.main([src, dst]) == 0
    saved = torch.load(dst, weights_only=True)
    assert sorted(saved['state_dict']) == ['backbone.layers.0.blocks.0.attn.qkv.weight',
                                           'backbone.norm.weight', 'head.fc.bias',
                                           'head.fc.weight']
    assert saved['meta']['weights'] == 'model'


def test_convert_cli_runs(tmp_path, official_file):
    path, _, _ = official_file
    dst = str(tmp_path / 'cli.pth')
    out = subprocess.run([sys.executable,
                          os.path.join(REPO, 'tools', 'model_converters', 'convert_official.py'),
                          path, dst, '--format', 'backbone'], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "weights from 'state_dict_ema'" in out.stdout
    assert os.path.exists(dst)


def test_classifier_init_cfg_loads_official_file_into_backbone(official_file):
    """mmengine's init flow of a whole ImageClassifier reaches SGFormer.init_weights."""
    path, ema, _ = official_file
    from mmpretrain.registry import MODELS
    clf = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='SGFormer', arch=dict(TINY), out_indices=(3, ), sga_impl='reference',
                      init_cfg=dict(type='Pretrained', checkpoint=path)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=64)))
    clf.init_weights()
    assert torch.equal(clf.backbone.block3[1].attn.kv2.weight.detach(),
                       ema['block3.1.attn.kv2.weight'])
    assert torch.equal(clf.backbone.pos_embed.detach(), ema['pos_embed'])
