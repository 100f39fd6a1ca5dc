"""torch 2.1-2.14 compatibility and the version check of ``import mmsgformer``."""
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from mmsgformer import compat
from mmsgformer.version import SUPPORTED, requirement

REPO = Path(__file__).resolve().parents[1]


def test_parse_version_and_range():
    assert compat.parse_version('2.1.2+cu121') == (2, 1, 2)
    assert compat.parse_version('2.0.0rc4') == (2, 0, 0)
    assert compat.parse_version('2.1.0a0+git1234') == (2, 1, 0)
    assert compat.in_range('2.1.0', '2.0.0', '2.2.0')
    assert not compat.in_range('2.2.0', '2.0.0', '2.2.0')
    assert not compat.in_range('1.7.1', '2.0.0', '2.2.0')
    assert compat.in_range('2.14.1', '2.1.0', None)
    assert not compat.in_range('2.0.1', '2.1', None)
    with pytest.raises(ValueError, match=r"'abc'.*release numbers"):
        compat.parse_version('abc')
    assert requirement('mmcv') == 'mmcv>=2.0.0,<2.2.0'
    assert requirement('torch') == 'torch>=2.1.0'


def test_feature_flags_match_the_torch_version():
    new = compat.TORCH_VERSION >= (2, 4)
    assert compat.HAS_REGISTER_FAKE == compat.HAS_REGISTER_AUTOGRAD == new
    assert compat.HAS_OPCHECK == compat.HAS_SAFE_GLOBALS == new
    assert compat.is_compiling() is False
    if compat.TORCH_VERSION >= (2, 3):
        assert compat.is_compiling is torch.compiler.is_compiling


def test_version_problems_name_package_and_range(monkeypatch):
    installed = {'mmcv': '2.2.0', 'mmdet': '3.3.0', 'mmengine': '0.10.7',
                 'mmsegmentation': '1.3.0', 'mmpretrain': '1.2.0'}

    def fake_version(name):
        if name not in installed:
            raise compat.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(compat.metadata, 'version', fake_version)
    assert compat.version_problems() == [
        'mmcv 2.2.0 is installed but mmsgformer needs mmcv>=2.0.0,<2.2.0',
        'mmsegmentation 1.3.0 is installed but mmsgformer needs mmsegmentation>=1.0.0,<1.3.0']
    with pytest.raises(ImportError, match=r'mmcv 2\.2\.0 .*mmcv>=2\.0\.0,<2\.2\.0'):
        compat.check_versions(environ={})
    compat.check_versions(environ={compat.SKIP_CHECK_ENV: '1'})  # no error
    # mmcv-full (the 1.x distribution) is always outside; an absent package is not a problem
    installed.pop('mmcv')
    installed.pop('mmsegmentation')
    installed['mmcv-full'] = '1.7.2'
    assert compat.version_problems() == [
        'mmcv-full 1.7.2 is installed but mmsgformer needs mmcv>=2.0.0,<2.2.0']


def test_import_mmsgformer_refuses_mmcv_out_of_range(tmp_path):
    # A dist-info earlier on sys.path is what importlib.metadata reports: mmcv 2.2.0 "installed".
    info = tmp_path / 'mmcv-2.2.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: mmcv\nVersion: 2.2.0\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop(compat.SKIP_CHECK_ENV, None)
    proc = subprocess.run([sys.executable, '-c', 'import mmsgformer'], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert ('ImportError: mmsgformer: mmcv 2.2.0 is installed but mmsgformer needs '
            'mmcv>=2.0.0,<2.2.0') in proc.stderr


def test_installed_stack_is_in_range():
    assert compat.version_problems() == []
    assert set(SUPPORTED) == {'torch', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation',
                              'mmpretrain'}


LEGACY_SCRIPT = textwrap.dedent('''
    import torch
    from mmsgformer.ops import _registration, segment_layout, sg_aggregate_reference
    assert _registration.LEGACY
    OP = torch.ops.mmsgformer
    torch.manual_seed(0)
    layout = segment_layout(61, 8)
    args = list(layout.starts), list(layout.lengths), list(layout.group_sizes)
    x = torch.randn(2, 61, 3, dtype=torch.float64, requires_grad=True)
    order = torch.argsort(torch.rand(2, 61), dim=1)
    w = torch.randn(sum(layout.group_sizes), dtype=torch.float64, requires_grad=True)
    b = torch.randn(layout.num_segments, dtype=torch.float64, requires_grad=True)
    out = OP.sg_aggregate(x, order, w, b, *args)
    ref = sg_aggregate_reference(x, order, w, b, layout)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, (x, w, b), g)
    exp = torch.autograd.grad(ref, (x, w, b), g)
    print('fwd', (out - ref).abs().max().item())
    print('bwd', max((p - q).abs().max().item() for p, q in zip(got, exp)))
    print('gradcheck', torch.autograd.gradcheck(
        lambda x_, w_, b_: OP.sg_aggregate(x_, order, w_, b_, *args), (x, w, b)))
    meta = OP.sg_aggregate(x.to('meta'), order.to('meta'), w.to('meta'), b.to('meta'), *args)
    print('meta_shape', tuple(meta.shape), meta.device, layout.num_out)
    try:
        OP.sg_aggregate(x.to('meta'), order.to('meta'), w.to('meta'), b.to('meta')[:1], *args)
    except ValueError as err:
        print('meta_error', err)
    q, k, v = (torch.randn(1, 2, n, 32, dtype=torch.float64, requires_grad=True)
               for n in (5, 7, 7))
    print('attention_gradcheck', torch.autograd.gradcheck(
        lambda a, b, c: OP.dot_product_attention(a, b, c, 0.3)[0], (q, k, v)))
    meta = OP.dot_product_attention(q.to('meta'), k.to('meta'), v.to('meta'), 0.3)[0]
    print('attention_meta', tuple(meta.shape), tuple(meta.stride()))
    out, _, mass = OP.dot_product_attention_key_mass(q, k, v, 0.3)
    print('key_mass_grad', out.requires_grad, mass.requires_grad, torch.autograd.gradcheck(
        lambda a, b, c: OP.dot_product_attention_key_mass(a, b, c, 0.3)[0], (q, k, v)))
''')


def test_legacy_registration_path_on_this_torch():
    """The torch < 2.4 registration (Python Meta + Autograd kernels) also works here."""
    env = dict(os.environ, MMSGFORMER_LEGACY_REGISTRATION='1')
    proc = subprocess.run([sys.executable, '-c', LEGACY_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(' ', 1) for line in proc.stdout.splitlines())
    assert float(lines['fwd']) <= 1e-12
    assert float(lines['bwd']) <= 1e-12
    assert lines['gradcheck'] == 'True'
    shape, device, num_out = lines['meta_shape'].rsplit(' ', 2)
    assert (shape, device) == (f'(2, {num_out}, 3)', 'meta')
    assert 'bias must have shape (3,)' in lines['meta_error']
    assert lines['attention_gradcheck'] == 'True'
    assert lines['attention_meta'] == '(1, 2, 5, 32) (320, 32, 64, 1)'
    assert lines['key_mass_grad'] == 'True False True'


def test_op_library_that_does_not_load_warns_once(monkeypatch):
    import mmsgformer.ops as ops
    monkeypatch.setattr(ops, '_warned', False)
    with pytest.warns(RuntimeWarning, match=r'_C\..*so exists but does not load with torch '
                      + torch.__version__.replace('+', r'\+') + r' \(undefined symbol: _ZN3c10'):
        ops._warn_unloadable(ImportError('undefined symbol: _ZN3c10'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ops._warn_unloadable(ImportError('undefined symbol: _ZN3c10'))  # only once
