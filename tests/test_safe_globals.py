"""Weights-only loading of runner checkpoints and official SG-Former files after import mmsgformer."""
import argparse
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import mmsgformer  # noqa: F401  (registers the allow-list)
from mmsgformer.checkpoint import load_file
from mmsgformer.compat import HAS_SAFE_GLOBALS
from mmsgformer.safe_globals import weights_only_load

needs_add_safe_globals = pytest.mark.skipif(
    not HAS_SAFE_GLOBALS, reason=f'torch {torch.__version__} has no '
    'torch.serialization.add_safe_globals (torch >= 2.4); the restricted unpickler replaces it')


@needs_add_safe_globals
def test_official_format_checkpoint_with_namespace_loads_weights_only(tmp_path):
    path = tmp_path / 'official.pth'
    torch.save({'epoch': 3, 'arch': 'sgformer_s', 'args': argparse.Namespace(lr=1e-3, model='s'),
                'state_dict': {'w': torch.ones(2)}, 'state_dict_ema': {'w': torch.zeros(2)}},
               path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['args'].lr == 1e-3
    torch.testing.assert_close(ckpt['state_dict_ema']['w'], torch.zeros(2))


@needs_add_safe_globals
def test_message_hub_history_buffers_and_numpy_load_weights_only(tmp_path):
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(np.float64(0.5))
    buf.update(1.5)
    path = tmp_path / 'runner.pth'
    torch.save({'message_hub': {'log_scalars': {'train/loss': buf}},
                'meta': {'seed': np.int64(7), 'arr': np.arange(3, dtype=np.float32)}}, path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['message_hub']['log_scalars']['train/loss'].mean() == 1.0
    assert int(ckpt['meta']['seed']) == 7
    np.testing.assert_array_equal(ckpt['meta']['arr'], np.arange(3, dtype=np.float32))


def test_arbitrary_classes_are_still_rejected(tmp_path):
    # The allow-list is narrow: any other pickled class still fails weights-only loading.
    path = tmp_path / 'evil.pth'
    code = textwrap.dedent(f'''
        import torch, fractions
        torch.save({{'x': fractions.Fraction(1, 3)}}, {str(path)!r})
    ''')
    subprocess.run([sys.executable, '-c', code], check=True)
    try:
        torch.load(path, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError
        assert 'Fraction' in str(err)
    else:
        raise AssertionError('weights-only loading accepted fractions.Fraction')


@needs_add_safe_globals
def test_reading_a_checkpoint_keeps_the_allow_list(tmp_path):
    # Regression: a ``torch.serialization.safe_globals`` context manager removes its classes on
    # exit, even ones allow-listed before; reading a checkpoint must not shrink the list.
    path = tmp_path / 'official.pth'
    torch.save({'args': argparse.Namespace(lr=1.0), 'state_dict': {'w': torch.ones(1)}}, path)
    load_file(str(path))
    assert argparse.Namespace in torch.serialization.get_safe_globals()
    assert torch.load(path, weights_only=True)['args'].lr == 1.0


@pytest.mark.parametrize('legacy_format', [False, True])
def test_restricted_unpickler_loads_official_files(tmp_path, legacy_format):
    # The torch < 2.4 path, exercised on any torch: tensors, Namespace, numpy arrays/scalars.
    path = tmp_path / 'official.pth'
    torch.save({'args': argparse.Namespace(lr=1e-3, model='s'), 'epoch': 3,
                'state_dict_ema': {'w': torch.arange(4, dtype=torch.float64).view(2, 2),
                                   'h': torch.ones(3, dtype=torch.bfloat16)},
                'meta': {'seed': np.int64(7), 'arr': np.arange(3, dtype=np.float32)}},
               path, _use_new_zipfile_serialization=not legacy_format)
    ckpt = weights_only_load(str(path), restricted=True)
    assert ckpt['args'].lr == 1e-3 and ckpt['args'].model == 's'
    assert torch.equal(ckpt['state_dict_ema']['w'],
                       torch.arange(4, dtype=torch.float64).view(2, 2))
    assert ckpt['state_dict_ema']['h'].dtype == torch.bfloat16
    assert int(ckpt['meta']['seed']) == 7
    np.testing.assert_array_equal(ckpt['meta']['arr'], np.arange(3, dtype=np.float32))


def test_restricted_unpickler_rejects_other_classes(tmp_path):
    import fractions
    path = tmp_path / 'evil.pth'
    torch.save({'x': fractions.Fraction(1, 3), 'w': torch.ones(1)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r'unsupported global fractions\.Fraction'):
        weights_only_load(str(path), restricted=True)
    with pytest.raises(ValueError, match=r'evil\.pth.*not allow-listed'):
        load_file(str(path))


@pytest.mark.parametrize('content,kind', [
    (b'', 'it is empty'),
    (b'model weights as text\n', 'unknown format'),
    (pickle.dumps({'w': [1.0]}), 'a plain pickle'),
    (b'\x10\x00\x00\x00\x00\x00\x00\x00{"w": {}}      ', 'a safetensors file'),
])
def test_not_a_torch_file_says_so(tmp_path, content, kind):
    path = tmp_path / 'weights.pth'
    path.write_bytes(content)
    with pytest.raises(ValueError, match='is not a torch checkpoint') as err:
        load_file(str(path))
    assert kind in str(err.value) and 'weights.pth' in str(err.value)
    assert 'allow-listed' not in str(err.value)


def test_zip_without_torch_data_is_not_a_torch_file(tmp_path):
    import zipfile
    path = tmp_path / 'weights.zip'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('readme.txt', 'hello')
    with pytest.raises(ValueError, match='a zip archive without the data.pkl of torch.save'):
        load_file(str(path))
