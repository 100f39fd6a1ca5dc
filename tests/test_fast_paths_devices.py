"""The fast paths' pieces (bands of rows, query chunks, image by image) are for the CPU only.

On a GPU every piece is a few kernel launches: the first H200 run (tools/gpu_check.py) measured
SG-Former-S training at 800x1344 at a ninth of Swin-T's speed, with bf16 no faster than float32,
while the op counts below grew with the batch. These tests run the backbone on the ``meta``
device, which takes the GPU's branches of :func:`mmsgformer.models.fast_paths.split_for_cache`
without a GPU, and count the ATen calls of a step.
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmsgformer.models import SGFormer, fast_paths
from mmsgformer.models.attention import _window_padding
from official_sgformer import TINY

# ATen calls that only make a view or an empty tensor (no kernel launch on a GPU)
_NO_KERNEL = {'view', '_unsafe_view', 't', 'transpose', 'permute', 'expand', 'alias', 'slice',
              'select', 'unsqueeze', 'squeeze', 'as_strided', 'split', 'split_with_sizes',
              'unbind', 'detach', 'reshape', 'narrow', 'unflatten', 'flatten', 'empty',
              'empty_strided', 'new_empty', 'new_empty_strided', 'lift_fresh', 'is_same_size'}


class _CountKernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _NO_KERNEL:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def _kernels_per_step(model: SGFormer, batch: int, size, device: str, train: bool) -> int:
    """ATen calls that launch a kernel in one step, after a step that fills the size-keyed
    caches; parameter gradients start empty (no accumulation into earlier ones)."""
    x = torch.randn(batch, 3, *size, device=device)
    model.train(train)
    counts = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        counter = _CountKernels()
        with counter, torch.set_grad_enabled(train):
            outs = model(x)
            if train:
                sum(o.mean() for o in outs).backward()
        counts.append(sum(counter.calls.values()))
    return counts[-1]


def test_split_for_cache_is_the_cpu():
    assert fast_paths.split_for_cache(torch.zeros(1))
    assert not fast_paths.split_for_cache(torch.zeros(1, device='meta'))


def test_pieces_are_whole_off_the_cpu():
    """Each splitting rule gives one piece for a non-CPU tensor where it splits a CPU one."""
    B, H, W, hidden = 2, 200, 336, 256  # stage 1 of SG-Former-S at 800x1344
    assert len(fast_paths.ffn_bands(B, H, W, hidden)) > B
    assert fast_paths.ffn_bands(B, H, W, hidden, split=False) == [(slice(0, B), 0, H)]
    big = (2, 64, 400, 672)  # the stem's first map at 800x1344, batch 2
    assert fast_paths._norm_act_images(torch.empty(big)) == [slice(0, 1), slice(1, 2)]
    assert fast_paths._norm_act_images(torch.empty(big, device='meta')) == [slice(0, 2)]
    stem = SGFormer(arch=dict(TINY)).stem.eval()
    with torch.no_grad():
        assert len(fast_paths.image_chunks(stem, torch.empty(8, 3, 64, 64))) == 2
        assert fast_paths.image_chunks(stem, torch.empty(8, 3, 64, 64, device='meta')) is None
    # the key-mass pass of the coarse branch (B=2, one head, 67200 queries, 1050 keys)
    cpu_rows = fast_paths._chunks(2, 1, 67200, 1050)[1]
    device_rows = fast_paths._chunks(2, 1, 67200, 1050, fast_paths._CHUNK_ELEMS_DEVICE)[1]
    assert -(-67200 // cpu_rows) > 100 and -(-67200 // device_rows) <= 10


def test_window_padding_masks_are_made_on_the_device():
    """The padded-window masks are built where the queries are (a host-to-GPU copy would make
    the host wait for the queued kernels), once per batch, size, device and dtype."""
    mask, counts, bias = _window_padding(3, 10, 16, 7, torch.device('cpu'), torch.float32)
    assert mask.shape == (3 * 2 * 3, 49) and counts.shape == (18, 1)
    assert bias.shape == (18, 1, 1, 49)
    assert mask.sum().item() == 3 * 10 * 16 and counts[:6, 0].tolist() == [49, 49, 14, 21, 21, 6]
    assert torch.equal(bias[:, 0, 0] == 0, mask == 1) and bias.min().item() == float('-inf')
    assert _window_padding(3, 10, 16, 7, torch.device('cpu'), torch.float32)[2] is bias  # cached
    meta = _window_padding(3, 10, 16, 7, torch.device('meta'), torch.bfloat16)
    assert all(t.device.type == 'meta' and t.dtype == torch.bfloat16 for t in meta)


@pytest.mark.parametrize('train,size,batches', [(True, (384, 384), (2, 4)),
                                                (False, (224, 224), (2, 8))])
def test_kernels_per_step_do_not_grow_with_the_batch_off_the_cpu(train, size, batches):
    """On a non-CPU device a step launches as many kernels for a batch of 4 or 8 as for 2; on
    the CPU the same sizes run in pieces (the FFN in bands of rows image by image at 384x384,
    the stem four images at a time at batch 8), so there the count grows. (From batch 2: a
    batch of one makes fewer copies, its permuted views being contiguous already.)"""
    torch.manual_seed(0)
    model = SGFormer(arch=dict(TINY), drop_path_rate=0.)
    small, large = batches
    cpu = [_kernels_per_step(model, b, size, 'cpu', train) for b in batches]
    assert cpu[1] > cpu[0]  # the pieces are there on the CPU
    model.to('meta')
    meta = [_kernels_per_step(model, b, size, 'meta', train) for b in batches]
    assert meta[0] == meta[1], f'batch {small}: {meta[0]} kernels, batch {large}: {meta[1]}'


def test_focal_attention_gathers_its_windows_in_one_chunk_off_the_cpu(monkeypatch):
    """Focal attention's window chunks (``chunk_bytes``, for the CPU's page faults) become one
    gather and one attention call on another device (``device_chunk_bytes``)."""
    from mmsgformer.models.focal_attention import FocalAttention, focal_geometry
    from mmsgformer.models.focal_transformer import FocalBlock
    monkeypatch.setattr(FocalAttention, 'chunk_bytes', 1)  # one window per call on the CPU
    gathers = {}
    for device in ('cpu', 'meta'):
        block = FocalBlock(16, 2, focal_window=5).to(device)
        geometry = focal_geometry((20, 23), 7, 3, 5, True, 'masked', device=device)
        counter = _CountKernels()
        with counter, torch.no_grad():
            block(torch.randn(2, 20 * 23, 16, device=device), (20, 23), geometry)
        gathers[device] = counter.calls['index_select']
    # the 3 x 4 windows one by one on the CPU, all in one gather on meta (the block makes the
    # same other index_select calls on both)
    assert gathers['cpu'] - gathers['meta'] == 3 * 4 - 1
