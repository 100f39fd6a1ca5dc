"""Weights-only loading of runner checkpoints and official SG-Former files after import mmsgformer."""
import argparse
import subprocess
import sys
import textwrap

import numpy as np
import torch

import mmsgformer  # noqa: F401  (registers the allow-list)


def test_official_format_checkpoint_with_namespace_loads_weights_only(tmp_path):
    path = tmp_path / 'official.pth'
    torch.save({'epoch': 3, 'arch': 'sgformer_s', 'args': argparse.Namespace(lr=1e-3, model='s'),
                'state_dict': {'w': torch.ones(2)}, 'state_dict_ema': {'w': torch.zeros(2)}},
               path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['args'].lr == 1e-3
    torch.testing.assert_close(ckpt['state_dict_ema']['w'], torch.zeros(2))


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


def test_reading_a_checkpoint_keeps_the_allow_list(tmp_path):
    # Regression: a ``torch.serialization.safe_globals`` context manager removes its classes on
    # exit, even ones allow-listed before; reading a checkpoint must not shrink the list.
    from mmsgformer.checkpoint import load_file
    path = tmp_path / 'official.pth'
    torch.save({'args': argparse.Namespace(lr=1.0), 'state_dict': {'w': torch.ones(1)}}, path)
    load_file(str(path))
    assert argparse.Namespace in torch.serialization.get_safe_globals()
    assert torch.load(path, weights_only=True)['args'].lr == 1.0
