"""Pure-PyTorch reference of the significance-guided key/value aggregation.

It follows the official computation literally: gather the tokens in rank order (a permuted copy),
cut the ranks into segments, and merge each group of ``g_k`` consecutive ranks with a
``Linear(g_k, 1)`` applied along the token axis. It runs wherever torch runs, and the compiled op
is tested against it.
"""
import torch
import torch.nn.functional as F

from .layout import SegmentLayout


def sg_aggregate_reference(tokens: torch.Tensor, order: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor, layout: SegmentLayout) -> torch.Tensor:
    """Aggregate rank-ordered tokens segment by segment.

    Args:
        tokens: ``(B, N, C)`` tokens in row-major spatial order.
        order: ``(B, N)`` int64; ``order[b, p]`` is the token index of rank ``p``
            (as returned by ``torch.sort(significance).indices``).
        weight: ``(sum_k g_k,)`` the segments' group weights, concatenated in segment order.
        bias: ``(K,)`` one bias per segment.
        layout: the :class:`SegmentLayout` for ``N`` tokens.

    Returns:
        ``(B, layout.num_out, C)`` aggregated tokens, least significant segment first.
    """
    B, N, C = tokens.shape
    ranked = torch.gather(tokens, 1, order.unsqueeze(-1).expand(B, N, C))
    outs = []
    w_start = 0
    for k in range(layout.num_segments):
        start, length = layout.starts[k], layout.lengths[k]
        g, count = layout.group_sizes[k], layout.counts[k]
        w_k = weight[w_start:w_start + g].view(1, g)
        w_start += g
        if count == 0:
            continue
        seg = ranked[:, start:start + length]
        pad = count * g - length
        if pad:
            seg = F.pad(seg, (0, 0, 0, pad))
        # (B, count, g, C) -> (B, count, C, g) -> Linear(g, 1) -> (B, count, C)
        seg = seg.reshape(B, count, g, C).transpose(2, 3)
        outs.append(F.linear(seg, w_k, bias[k:k + 1]).squeeze(-1))
    return torch.cat(outs, dim=1)


def dot_product_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                    scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T) v`` spelled out: the full ``(B, H, Nq, Nk)`` probabilities.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k, v: ``(B, H, Nk, D)`` keys and values.
        scale: the logit scale (``D ** -0.5`` in SG-Former).

    Returns:
        ``(B, H, Nq, D)``.
    """
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v


def dot_product_attention_key_mass_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                             scale: float):
    """:func:`dot_product_attention_reference` and the mean probability each key receives.

    Returns:
        ``(out (B, H, Nq, D), mass (B, Nk))``, ``mass[b, j]`` the mean over heads and queries of
        the probabilities of key ``j``.
    """
    probs = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    return probs @ v, probs.mean(2).mean(1)
