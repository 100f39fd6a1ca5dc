"""A literal functional re-implementation of the OFFICIAL SG-Former model (test helper only).

Written from the description in docs/design.md, mirroring the official code path step by step and
independent of ``mmsgformer.models``:

* hard-coded 7x7 windows with no padding (grids must be multiples of 7);
* significance map = local + global from detached probabilities, returned as a row-major and a
  column-major flattening; the map variable is threaded through all blocks and the attention
  type is chosen at run time by "incoming map is None";
* self-guided attention: two ``torch.sort`` calls, ``torch.gather`` into sorted copies, the
  fixed official segment table and ``Linear(g_k, 1)`` per segment;
* ``pos_embed`` is added without any resizing (its length must equal the stem token count);
* classifier head: ``norm4`` -> mean over tokens -> ``head``.

It also builds official-format state dicts (official key order, design §15) with random
non-trivial weights, and saves official-format training checkpoints.
"""
import argparse
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

SEGMENTS = {  # sr ratio -> [(fraction start, fraction end, group size)] in quarters of N
    8: [(0, 1, 196), (1, 3, 56), (3, 4, 28)],
    4: [(0, 1, 49), (1, 3, 14), (3, 4, 7)],
    2: [(0, 2, 2), (2, 4, 1)],
}

TINY = dict(embed_dims=[16, 32, 64, 64], num_heads=[2, 2, 4, 4], depths=[2, 2, 2, 1])


# --------------------------------------------------------------------------- key schema
def official_keys(embed_dims: Sequence[int], num_heads: Sequence[int], depths: Sequence[int],
                  img_size: int = 224, num_classes: int = 1000, mlp_ratio: int = 4,
                  sr_ratios: Sequence[int] = (8, 4, 2, 1),
                  pos_tokens: Optional[int] = None) -> List[Tuple[str, Tuple[int, ...]]]:
    """``[(name, shape)]`` in official order (design §15 templates)."""
    C1 = embed_dims[0]
    n_pos = pos_tokens if pos_tokens is not None else (img_size // 4) ** 2
    keys = [('pos_embed', (1, n_pos, C1))]
    for i in (0, 2, 4):
        cin = 3 if i == 0 else C1
        keys += [(f'patch_embed1.conv.{i}.c.weight', (C1, cin, 3, 3)),
                 (f'patch_embed1.conv.{i}.bn.weight', (C1, )),
                 (f'patch_embed1.conv.{i}.bn.bias', (C1, ))]
    keys += [('patch_embed1.norm.weight', (C1, )), ('patch_embed1.norm.bias', (C1, ))]
    for s in range(4):
        C, r, st = embed_dims[s], sr_ratios[s], s + 1
        if s > 0:
            Cp = embed_dims[s - 1]
            p = f'patch_embed{st}'
            keys += [(f'{p}.conv1.c.weight', (C, Cp, 1, 1)), (f'{p}.conv1.bn.weight', (C, )),
                     (f'{p}.conv1.bn.bias', (C, )), (f'{p}.conv2.c.weight', (C, 1, 3, 3)),
                     (f'{p}.conv2.bn.weight', (C, )), (f'{p}.conv2.bn.bias', (C, )),
                     (f'{p}.conv3.c.weight', (C, C, 1, 1)), (f'{p}.conv3.bn.weight', (C, )),
                     (f'{p}.conv3.bn.bias', (C, ))]
        for j in range(depths[s]):
            b = f'block{st}.{j}'
            keys += [(f'{b}.norm1.weight', (C, )), (f'{b}.norm1.bias', (C, ))]
            a = f'{b}.attn'
            if r == 1:
                keys += [(f'{a}.q.weight', (C, C)), (f'{a}.q.bias', (C, )),
                         (f'{a}.kv.weight', (2 * C, C)), (f'{a}.kv.bias', (2 * C, ))]
            elif j % 2 == 0:
                keys += [(f'{a}.sr.weight', (C, C, r, r)), (f'{a}.sr.bias', (C, )),
                         (f'{a}.norm.weight', (C, )), (f'{a}.norm.bias', (C, )),
                         (f'{a}.q1.weight', (C // 2, C)), (f'{a}.q1.bias', (C // 2, )),
                         (f'{a}.kv1.weight', (C, C)), (f'{a}.kv1.bias', (C, )),
                         (f'{a}.q2.weight', (C // 2, C)), (f'{a}.q2.bias', (C // 2, )),
                         (f'{a}.kv2.weight', (C, C)), (f'{a}.kv2.bias', (C, ))]
            else:
                keys += [(f'{a}.q.weight', (C, C)), (f'{a}.q.bias', (C, )),
                         (f'{a}.kv1.weight', (C, C)), (f'{a}.kv1.bias', (C, )),
                         (f'{a}.kv2.weight', (C, C)), (f'{a}.kv2.bias', (C, ))]
                for k, (_, _, g) in enumerate(SEGMENTS[r]):
                    keys += [(f'{a}.f{k + 1}.weight', (1, g)), (f'{a}.f{k + 1}.bias', (1, ))]
            keys += [(f'{a}.lepe_linear.weight', (C, C)), (f'{a}.lepe_linear.bias', (C, )),
                     (f'{a}.lepe_conv.weight', (C, 1, 3, 3)), (f'{a}.lepe_conv.bias', (C, )),
                     (f'{a}.proj.weight', (C, C)), (f'{a}.proj.bias', (C, )),
                     (f'{b}.norm2.weight', (C, )), (f'{b}.norm2.bias', (C, )),
                     (f'{b}.mlp.fc1.weight', (mlp_ratio * C, C)),
                     (f'{b}.mlp.fc1.bias', (mlp_ratio * C, )),
                     (f'{b}.mlp.dwconv.dwconv.weight', (mlp_ratio * C, 1, 3, 3)),
                     (f'{b}.mlp.dwconv.dwconv.bias', (mlp_ratio * C, )),
                     (f'{b}.mlp.fc2.weight', (C, mlp_ratio * C)),
                     (f'{b}.mlp.fc2.bias', (C, ))]
        keys += [(f'norm{st}.weight', (C, )), (f'norm{st}.bias', (C, ))]
    keys += [('head.weight', (num_classes, embed_dims[3])), ('head.bias', (num_classes, ))]
    return keys


def make_official_state_dict(embed_dims: Sequence[int], num_heads: Sequence[int],
                             depths: Sequence[int], img_size: int = 224, num_classes: int = 10,
                             seed: int = 0, dtype: torch.dtype = torch.float64,
                             pos_tokens: Optional[int] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Random non-trivial official-format weights (including ``head.*``), official key order.

    Matrices ~ N(0, 1/fan_in) (convs: fan_in = in/groups * k * k), norm weights ~ 1 + N(0, 0.1),
    biases ~ N(0, 0.1), segment weights ~ N(1/g, 0.5/g), ``pos_embed`` ~ N(0, 0.2).
    """
    gen = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for name, shape in official_keys(embed_dims, num_heads, depths, img_size, num_classes,
                                     pos_tokens=pos_tokens):
        randn = torch.randn(shape, generator=gen, dtype=torch.float64)
        leaf = name.rsplit('.', 1)[0]
        if name == 'pos_embed':
            t = 0.2 * randn
        elif name.endswith('.bias'):
            t = 0.1 * randn
        elif leaf.split('.')[-1].startswith('norm') or leaf.endswith('.bn'):
            t = 1 + 0.1 * randn
        elif '.attn.f' in name and len(shape) == 2 and shape[0] == 1:
            g = shape[1]
            t = (1 + 0.5 * randn) / g
        else:
            fan_in = int(math.prod(shape[1:]))
            t = randn / math.sqrt(fan_in)
        sd[name] = t.to(dtype)
    return sd


def save_official_checkpoint(path: str, state_dict: Dict[str, torch.Tensor],
                             state_dict_ema: Optional[Dict[str, torch.Tensor]] = None,
                             arch: str = 'sgformer_s') -> None:
    """Write a file in the official training-checkpoint format (design §14)."""
    ckpt = {
        'epoch': 299,
        'arch': arch,
        'state_dict': state_dict,
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-5, 'params': [0, 1]}]},
        'version': 2,
        'args': argparse.Namespace(model=arch, lr=1e-3, drop_path=0.1, model_ema=True),
        'metric': 83.2,
    }
    if state_dict_ema is not None:
        ckpt['state_dict_ema'] = state_dict_ema
    torch.save(ckpt, path)


# --------------------------------------------------------------------------- official forward
def _linear(x, sd, name):
    return F.linear(x, sd[name + '.weight'], sd.get(name + '.bias'))


def _ln(x, sd, name, eps):
    return F.layer_norm(x, (x.shape[-1], ), sd[name + '.weight'], sd[name + '.bias'], eps)


def _conv_bn(x, sd, name, stride, padding, groups=1):
    x = F.conv2d(x, sd[name + '.c.weight'], None, stride, padding, 1, groups)
    return F.group_norm(x, 1, sd[name + '.bn.weight'], sd[name + '.bn.bias'], 1e-5)


def window_partition(x, window_size):
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows, window_size, H, W):
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def _lepe(x, sd, a, H, W):
    B, N, C = x.shape
    lepe = _linear(x, sd, a + '.lepe_linear').transpose(1, 2).reshape(B, C, H, W)
    lepe = F.conv2d(lepe, sd[a + '.lepe_conv.weight'], sd[a + '.lepe_conv.bias'], 1, 1, 1, C)
    return lepe.reshape(B, C, N).transpose(1, 2)


def _hsa(x, sd, a, H, W, heads, r):
    B, N, C = x.shape
    g, d = heads // 2, C // heads
    scale = d ** -0.5
    ws = 7
    # group 1: coarse
    q1 = _linear(x, sd, a + '.q1').reshape(B, N, g, d).permute(0, 2, 1, 3)
    x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
    x_1 = F.conv2d(x_, sd[a + '.sr.weight'], sd[a + '.sr.bias'], stride=r)
    x_1 = x_1.reshape(B, C, -1).permute(0, 2, 1)
    x_1 = F.gelu(_ln(x_1, sd, a + '.norm', 1e-5))
    kv1 = _linear(x_1, sd, a + '.kv1').reshape(B, -1, 2, g, d).permute(2, 0, 3, 1, 4)
    k1, v1 = kv1[0], kv1[1]
    attn1 = (q1 @ k1.transpose(-2, -1)) * scale
    attn1 = attn1.softmax(dim=-1)
    global_mask_value = torch.mean(attn1.detach(), dim=1)
    global_mask_value = torch.mean(global_mask_value, dim=1)
    global_mask_value = F.interpolate(global_mask_value.view(B, 1, H // r, W // r), (H, W),
                                      mode='nearest')[:, 0]
    x1 = (attn1 @ v1).transpose(1, 2).reshape(B, N, C // 2)
    # group 2: 7x7 windows, no padding
    q2 = _linear(x, sd, a + '.q2').reshape(B, H, W, C // 2)
    kv2 = _linear(x, sd, a + '.kv2').reshape(B, H, W, C)
    q2 = window_partition(q2, ws).reshape(-1, ws * ws, g, d).permute(0, 2, 1, 3)
    kv2 = window_partition(kv2, ws).reshape(-1, ws * ws, 2, g, d).permute(2, 0, 3, 1, 4)
    k2, v2 = kv2[0], kv2[1]
    attn2 = (q2 @ k2.transpose(-2, -1)) * scale
    attn2 = attn2.softmax(dim=-1)
    local_mask_value = torch.mean(attn2.detach(), dim=1)
    local_mask_value = torch.mean(local_mask_value, dim=1)
    local_mask_value = window_reverse(local_mask_value.view(-1, ws, ws, 1), ws, H, W)[..., 0]
    x2 = (attn2 @ v2).transpose(1, 2).reshape(-1, ws, ws, C // 2)
    x2 = window_reverse(x2, ws, H, W).reshape(B, N, C // 2)
    mask = local_mask_value + global_mask_value
    mask_1 = mask.view(B, H * W)
    mask_2 = mask.permute(0, 2, 1).reshape(B, H * W)
    out = torch.cat([x1, x2], dim=-1)
    out = _linear(out + _lepe(x, sd, a, H, W), sd, a + '.proj')
    return out, [mask_1, mask_2]


def _sga(x, sd, a, H, W, heads, r, mask):
    B, N, C = x.shape
    g, d = heads // 2, C // heads
    scale = d ** -0.5
    q = _linear(x, sd, a + '.q').reshape(B, N, heads, d).permute(0, 2, 1, 3)
    mask_1, mask_2 = mask
    idx_1 = torch.sort(mask_1, dim=1).indices
    idx_2 = torch.sort(mask_2, dim=1).indices
    x_t = x.reshape(B, H, W, C).permute(0, 2, 1, 3).reshape(B, N, C)
    seq1 = torch.gather(x, 1, idx_1.unsqueeze(-1).expand(-1, -1, C))
    seq2 = torch.gather(x_t, 1, idx_2.unsqueeze(-1).expand(-1, -1, C))

    def aggregate(seq):
        parts = []
        for k, (q0, q1_, gk) in enumerate(SEGMENTS[r]):
            seg = seq[:, N // 4 * q0:N // 4 * q1_] if q1_ < 4 else seq[:, N // 4 * q0:]
            seg = seg.reshape(B, -1, gk, C).permute(0, 1, 3, 2)
            parts.append(_linear(seg, sd, f'{a}.f{k + 1}').squeeze(-1))
        return torch.cat(parts, dim=1)

    seq1, seq2 = aggregate(seq1), aggregate(seq2)
    kv1 = _linear(seq1, sd, a + '.kv1').reshape(B, -1, 2, g, d).permute(2, 0, 3, 1, 4)
    kv2 = _linear(seq2, sd, a + '.kv2').reshape(B, -1, 2, g, d).permute(2, 0, 3, 1, 4)
    k = torch.cat([kv1[0], kv2[0]], dim=1)
    v = torch.cat([kv1[1], kv2[1]], dim=1)
    attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, C)
    out = _linear(out + _lepe(x, sd, a, H, W), sd, a + '.proj')
    return out, None


def _std(x, sd, a, H, W, heads):
    B, N, C = x.shape
    d = C // heads
    q = _linear(x, sd, a + '.q').reshape(B, N, heads, d).permute(0, 2, 1, 3)
    kv = _linear(x, sd, a + '.kv').reshape(B, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
    attn = ((q @ kv[0].transpose(-2, -1)) * d ** -0.5).softmax(dim=-1)
    out = (attn @ kv[1]).transpose(1, 2).reshape(B, N, C)
    return _linear(out + _lepe(x, sd, a, H, W), sd, a + '.proj'), None


def _mlp(x, sd, m, H, W):
    B, N, _ = x.shape
    z = _linear(x, sd, m + '.fc1')
    C4 = z.shape[-1]
    zc = z.transpose(1, 2).view(B, C4, H, W)
    zc = F.conv2d(zc, sd[m + '.dwconv.dwconv.weight'], sd[m + '.dwconv.dwconv.bias'], 1, 1, 1,
                  C4).flatten(2).transpose(1, 2)
    z = F.gelu(z + zc)
    return _linear(z, sd, m + '.fc2')


def official_forward(sd: Dict[str, torch.Tensor], img: torch.Tensor,
                     num_heads: Sequence[int], depths: Sequence[int],
                     sr_ratios: Sequence[int] = (8, 4, 2, 1)
                     ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Run the official model function.

    Returns:
        ``(stage_outputs, logits)``: the four ``(B, C_i, H_i, W_i)`` maps after ``norm1..4``
        and the classifier logits (``None`` without ``head.*`` in ``sd``).
    """
    B = img.shape[0]
    x = _conv_bn(img, sd, 'patch_embed1.conv.0', 2, 1)
    x = F.gelu(x)
    x = _conv_bn(x, sd, 'patch_embed1.conv.2', 1, 1)
    x = F.gelu(x)
    x = _conv_bn(x, sd, 'patch_embed1.conv.4', 2, 1)
    _, _, H, W = x.shape
    x = _ln(x.flatten(2).transpose(1, 2), sd, 'patch_embed1.norm', 1e-5)
    x = x + sd['pos_embed']
    mask = None
    outs = []
    for s in range(4):
        st = s + 1
        if s > 0:
            p = f'patch_embed{st}'
            x = F.gelu(_conv_bn(x, sd, p + '.conv1', 1, 0))
            x = F.gelu(_conv_bn(x, sd, p + '.conv2', 2, 1, groups=x.shape[1]))
            x = _conv_bn(x, sd, p + '.conv3', 1, 0)
            _, _, H, W = x.shape
            x = x.flatten(2).transpose(1, 2)
        for j in range(depths[s]):
            b = f'block{st}.{j}'
            y = _ln(x, sd, b + '.norm1', 1e-6)
            if sr_ratios[s] == 1:
                a, mask = _std(y, sd, b + '.attn', H, W, num_heads[s])
            elif mask is None:
                a, mask = _hsa(y, sd, b + '.attn', H, W, num_heads[s], sr_ratios[s])
            else:
                a, mask = _sga(y, sd, b + '.attn', H, W, num_heads[s], sr_ratios[s], mask)
            x = x + a
            x = x + _mlp(_ln(x, sd, b + '.norm2', 1e-6), sd, b + '.mlp', H, W)
        x = _ln(x, sd, f'norm{st}', 1e-6)
        if s < 3:
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        else:  # stage 4 stays as tokens for the head
            outs.append(x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous())
    logits = None
    if 'head.weight' in sd:
        logits = F.linear(x.mean(dim=1), sd['head.weight'], sd['head.bias'])
    return outs, logits


def official_significance(sd: Dict[str, torch.Tensor], img: torch.Tensor,
                          num_heads: Sequence[int], depths: Sequence[int],
                          sr_ratios: Sequence[int] = (8, 4, 2, 1)) -> List[torch.Tensor]:
    """Maps ``(B, H, W)`` of every hybrid-scale block (official path), in order."""
    maps = []
    orig = _hsa

    def spy(x, sd_, a, H, W, heads, r):
        out, m = orig(x, sd_, a, H, W, heads, r)
        maps.append(m[0].reshape(x.shape[0], H, W))
        return out, m

    globals()['_hsa'] = spy
    try:
        official_forward(sd, img, num_heads, depths, sr_ratios)
    finally:
        globals()['_hsa'] = orig
    return maps
