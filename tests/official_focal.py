"""The OFFICIAL Focal Transformer v1 model, re-implemented literally (tests only).

Mirrors microsoft/Focal-Transformer ``classification/focal_transformer.py`` as described in
docs/design.md (F§1-F§7), mechanism by mechanism, so that tests can compare the plugin against an
independent "official path":

* the input size is fixed at construction (``img_size``) and asserted; a stage whose map is
  ``<= window_size`` shrinks its window to the map and drops the surroundings;
* zero padding to multiples of the window, padded tokens not masked;
* fine surroundings from four ``torch.roll`` copies of k and v + ``valid_ind_rolled``;
* pooled windows through the same qkv Linear, gathered with ``nn.Unfold`` (zero padding), with a
  -100 mask from the unfold of an all-ones grid;
* persistent index buffers in the state dict, classifier ``head``.

Only focal_level 1 or 2 (all released models use 2) and no shift / layer scale (unused in v1).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def window_partition(x, window_size):
    """(B, H, W, C) -> (B * nW, ws, ws, C), windows row-major, batch-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_partition_noreshape(x, window_size):
    """(B, H, W, C) -> (B, nWh, nWw, ws, ws, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous()


def window_reverse(windows, window_size, H, W):
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def get_relative_position_index(q_windows, k_windows):
    coords_q = torch.stack(torch.meshgrid(torch.arange(q_windows[0]), torch.arange(q_windows[1]),
                                          indexing='ij'))
    coords_k = torch.stack(torch.meshgrid(torch.arange(k_windows[0]), torch.arange(k_windows[1]),
                                          indexing='ij'))
    coords_flatten_q = torch.flatten(coords_q, 1)
    coords_flatten_k = torch.flatten(coords_k, 1)
    relative_coords = coords_flatten_q[:, :, None] - coords_flatten_k[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += k_windows[0] - 1
    relative_coords[:, :, 1] += k_windows[1] - 1
    relative_coords[:, :, 0] *= (q_windows[1] + k_windows[1]) - 1
    return relative_coords.sum(-1)


class Mlp(nn.Module):

    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):

    def __init__(self, dim, expand_size, window_size, focal_window, focal_level, num_heads,
                 qkv_bias=True, qk_scale=None, pool_method='none'):
        super().__init__()
        self.dim = dim
        self.expand_size = expand_size
        self.window_size = window_size  # (Wh, Ww)
        self.pool_method = pool_method
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.focal_level = focal_level
        self.focal_window = focal_window

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        self.register_buffer('relative_position_index',
                             get_relative_position_index(window_size, window_size))

        if self.expand_size > 0 and focal_level > 0:
            ws, es = self.window_size[0], self.expand_size
            self.window_size_of_key = 4 * ws * ws - 4 * (ws - es) * (ws - es)
            self.relative_position_bias_table_to_neighbors = nn.Parameter(
                torch.zeros(1, num_heads, ws * ws, self.window_size_of_key))
            nn.init.trunc_normal_(self.relative_position_bias_table_to_neighbors, std=.02,
                                  a=-2., b=2.)
            mask_tl = torch.ones(ws, ws)
            mask_tl[:-es, :-es] = 0
            mask_tr = torch.ones(ws, ws)
            mask_tr[:-es, es:] = 0
            mask_bl = torch.ones(ws, ws)
            mask_bl[es:, :-es] = 0
            mask_br = torch.ones(ws, ws)
            mask_br[es:, es:] = 0
            mask_rolled = torch.stack((mask_tl, mask_tr, mask_bl, mask_br), 0).flatten(0)
            self.register_buffer('valid_ind_rolled', mask_rolled.nonzero().view(-1))

        if pool_method != 'none' and focal_level > 1:
            assert focal_level == 2, 'only focal_level 2 is re-implemented'
            self.relative_position_bias_table_to_windows = nn.ParameterList()
            self.unfolds = nn.ModuleList()
            k = 0
            stride = 2**k
            kernel_size = 2 * (self.focal_window // 2) + 2**k + (2**k - 1)
            self.unfolds += [nn.Unfold(kernel_size=(kernel_size, kernel_size), stride=stride,
                                       padding=kernel_size // 2)]
            table = nn.Parameter(torch.zeros(
                self.num_heads, (self.window_size[0] + self.focal_window + 2**k - 2)
                * (self.window_size[1] + self.focal_window + 2**k - 2)))
            nn.init.trunc_normal_(table, std=.02, a=-2., b=2.)
            self.relative_position_bias_table_to_windows.append(table)
            self.register_buffer('relative_position_index_0', get_relative_position_index(
                self.window_size, (self.focal_window + 2**k - 1, ) * 2))

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x_all, mask_all):
        x = x_all[0]
        B, nH, nW, C = x.shape
        qkv = self.qkv(x).reshape(B, nH, nW, 3, C).permute(3, 0, 1, 2, 4).contiguous()
        q, k, v = qkv[0], qkv[1], qkv[2]
        ws = self.window_size[0]
        (q_windows, k_windows, v_windows) = map(
            lambda t: window_partition(t, ws).view(
                -1, ws * ws, self.num_heads, C // self.num_heads).transpose(1, 2), (q, k, v))

        if self.expand_size > 0 and self.focal_level > 0:
            es = self.expand_size
            (k_tl, v_tl) = map(lambda t: torch.roll(t, shifts=(-es, -es), dims=(1, 2)), (k, v))
            (k_tr, v_tr) = map(lambda t: torch.roll(t, shifts=(-es, es), dims=(1, 2)), (k, v))
            (k_bl, v_bl) = map(lambda t: torch.roll(t, shifts=(es, -es), dims=(1, 2)), (k, v))
            (k_br, v_br) = map(lambda t: torch.roll(t, shifts=(es, es), dims=(1, 2)), (k, v))
            part = lambda t: window_partition(t, ws).view(  # noqa: E731
                -1, ws * ws, self.num_heads, C // self.num_heads)
            (k_tl_w, k_tr_w, k_bl_w, k_br_w) = map(part, (k_tl, k_tr, k_bl, k_br))
            (v_tl_w, v_tr_w, v_bl_w, v_br_w) = map(part, (v_tl, v_tr, v_bl, v_br))
            k_rolled = torch.cat((k_tl_w, k_tr_w, k_bl_w, k_br_w), 1).transpose(1, 2)
            v_rolled = torch.cat((v_tl_w, v_tr_w, v_bl_w, v_br_w), 1).transpose(1, 2)
            k_rolled = k_rolled[:, :, self.valid_ind_rolled]
            v_rolled = v_rolled[:, :, self.valid_ind_rolled]
            k_rolled = torch.cat((k_windows, k_rolled), 2)
            v_rolled = torch.cat((v_windows, v_rolled), 2)
        else:
            k_rolled = k_windows
            v_rolled = v_windows

        if self.pool_method != 'none' and self.focal_level > 1:
            k_pooled, v_pooled = [], []
            for k in range(self.focal_level - 1):
                stride = 2**k
                x_window_pooled = x_all[k + 1]  # B, nWh, nWw, C
                nWh, nWw = x_window_pooled.shape[1:3]
                unfold = self.unfolds[k]
                ks = unfold.kernel_size
                mask = x_window_pooled.new(nWh, nWw).fill_(1)
                unfolded_mask = unfold(mask.unsqueeze(0).unsqueeze(1)).view(
                    1, 1, ks[0], ks[1], -1).permute(0, 4, 2, 3, 1).contiguous().view(
                        nWh * nWw // stride // stride, -1, 1)
                x_window_masks = unfolded_mask.flatten(1).unsqueeze(0)
                x_window_masks = x_window_masks.masked_fill(
                    x_window_masks == 0, float(-100.0)).masked_fill(x_window_masks > 0, 0.0)
                mask_all[k + 1] = x_window_masks

                qkv_pooled = self.qkv(x_window_pooled).reshape(B, nWh, nWw, 3, C).permute(
                    3, 0, 4, 1, 2).contiguous()
                k_pooled_k, v_pooled_k = qkv_pooled[1], qkv_pooled[2]  # B, C, nWh, nWw
                (k_pooled_k, v_pooled_k) = map(
                    lambda t: unfold(t).view(B, C, ks[0], ks[1], -1).permute(
                        0, 4, 2, 3, 1).contiguous().view(
                            -1, ks[0] * ks[1], self.num_heads,
                            C // self.num_heads).transpose(1, 2), (k_pooled_k, v_pooled_k))
                k_pooled += [k_pooled_k]
                v_pooled += [v_pooled_k]
            k_all = torch.cat([k_rolled] + k_pooled, 2)
            v_all = torch.cat([v_rolled] + v_pooled, 2)
        else:
            k_all = k_rolled
            v_all = v_rolled

        q_windows = q_windows * self.scale
        attn = q_windows @ k_all.transpose(-2, -1)
        window_area = ws * ws
        window_area_rolled = k_rolled.shape[2]

        relative_position_bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)].view(window_area, window_area, -1)
        relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()
        attn[:, :, :window_area, :window_area] = (
            attn[:, :, :window_area, :window_area] + relative_position_bias.unsqueeze(0))

        if self.expand_size > 0 and self.focal_level > 0:
            attn[:, :, :window_area, window_area:window_area_rolled] = (
                attn[:, :, :window_area, window_area:window_area_rolled]
                + self.relative_position_bias_table_to_neighbors)

        if self.pool_method != 'none' and self.focal_level > 1:
            offset = window_area_rolled
            for k in range(self.focal_level - 1):
                n = (self.focal_window + 2**k - 1)**2
                idx = getattr(self, f'relative_position_index_{k}')
                bias = self.relative_position_bias_table_to_windows[k][:, idx.view(-1)].view(
                    -1, window_area, n)
                attn[:, :, :window_area, offset:offset + n] = (
                    attn[:, :, :window_area, offset:offset + n] + bias.unsqueeze(0))
                if mask_all[k + 1] is not None:
                    m = mask_all[k + 1]
                    attn[:, :, :window_area, offset:offset + n] = (
                        attn[:, :, :window_area, offset:offset + n]
                        + m[:, :, None, None, :].repeat(attn.shape[0] // m.shape[1], 1, 1, 1,
                                                        1).view(-1, 1, 1, m.shape[-1]))
                offset += n

        assert mask_all[0] is None  # no shift in v1
        attn = self.softmax(attn)
        x = (attn @ v_all).transpose(1, 2).reshape(attn.shape[0], window_area, C)
        return self.proj(x)


class FocalTransformerBlock(nn.Module):

    def __init__(self, dim, input_resolution, num_heads, window_size=7, expand_size=0,
                 mlp_ratio=4., qkv_bias=True, qk_scale=None, pool_method='none', focal_level=1,
                 focal_window=1):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.expand_size = expand_size
        self.pool_method = pool_method
        self.focal_level = focal_level
        if min(self.input_resolution) <= self.window_size:
            self.expand_size = 0
            self.window_size = min(self.input_resolution)
        self.window_size_glo = self.window_size

        self.pool_layers = nn.ModuleList()
        if self.pool_method != 'none':
            for k in range(self.focal_level - 1):
                wg = math.floor(self.window_size_glo / (2**k))
                if self.pool_method == 'fc':
                    self.pool_layers.append(nn.Linear(wg * wg, 1))
                    self.pool_layers[-1].weight.data.fill_(1. / (wg * wg))
                    self.pool_layers[-1].bias.data.fill_(0)
                elif self.pool_method == 'conv':
                    self.pool_layers.append(nn.Conv2d(dim, dim, kernel_size=wg, stride=wg,
                                                      groups=dim))

        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, expand_size=self.expand_size, window_size=(self.window_size, ) * 2,
            focal_window=focal_window, focal_level=focal_level, num_heads=num_heads,
            qkv_bias=qkv_bias, qk_scale=qk_scale, pool_method=pool_method)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer('attn_mask', None)

    def forward(self, x):
        H, W = self.input_resolution
        B, L, C = x.shape
        assert L == H * W, 'input feature has wrong size'
        shortcut = x
        x = self.norm1(x)
        x = x.view(B, H, W, C)
        pad_l = pad_t = 0
        pad_r = (self.window_size - W % self.window_size) % self.window_size
        pad_b = (self.window_size - H % self.window_size) % self.window_size
        if pad_r > 0 or pad_b > 0:
            x = F.pad(x, (0, 0, pad_l, pad_r, pad_t, pad_b))
        B, H, W, C = x.shape
        shifted_x = x
        x_windows_all = [shifted_x]
        x_window_masks_all = [self.attn_mask]

        if self.focal_level > 1 and self.pool_method != 'none':
            for k in range(self.focal_level - 1):
                wg = math.floor(self.window_size_glo / (2**k))
                pooled_h = math.ceil(H / self.window_size) * (2**k)
                pooled_w = math.ceil(W / self.window_size) * (2**k)
                H_pool, W_pool = pooled_h * wg, pooled_w * wg
                x_level_k = shifted_x
                if H > H_pool:
                    trim_t = (H - H_pool) // 2
                    trim_b = H - H_pool - trim_t
                    x_level_k = x_level_k[:, trim_t:-trim_b]
                elif H < H_pool:
                    pad_t = (H_pool - H) // 2
                    pad_b = H_pool - H - pad_t
                    x_level_k = F.pad(x_level_k, (0, 0, 0, 0, pad_t, pad_b))
                if W > W_pool:
                    trim_l = (W - W_pool) // 2
                    trim_r = W - W_pool - trim_l
                    x_level_k = x_level_k[:, :, trim_l:-trim_r]
                elif W < W_pool:
                    pad_l = (W_pool - W) // 2
                    pad_r = W_pool - W - pad_l
                    x_level_k = F.pad(x_level_k, (0, 0, pad_l, pad_r))
                x_windows_noreshape = window_partition_noreshape(x_level_k.contiguous(), wg)
                nWh, nWw = x_windows_noreshape.shape[1:3]
                if self.pool_method == 'mean':
                    x_windows_pooled = x_windows_noreshape.mean([3, 4])
                elif self.pool_method == 'max':
                    x_windows_pooled = x_windows_noreshape.max(-2)[0].max(-2)[0].view(
                        B, nWh, nWw, C)
                elif self.pool_method == 'fc':
                    x_windows_noreshape = x_windows_noreshape.view(
                        B, nWh, nWw, wg * wg, C).transpose(3, 4)
                    x_windows_pooled = self.pool_layers[k](x_windows_noreshape).flatten(-2)
                elif self.pool_method == 'conv':
                    x_windows_noreshape = x_windows_noreshape.view(-1, wg, wg, C).permute(
                        0, 3, 1, 2).contiguous()
                    x_windows_pooled = self.pool_layers[k](x_windows_noreshape).view(
                        B, nWh, nWw, C)
                x_windows_all += [x_windows_pooled]
                x_window_masks_all += [None]

        attn_windows = self.attn(x_windows_all, mask_all=x_window_masks_all)
        attn_windows = attn_windows[:, :self.window_size**2]
        attn_windows = attn_windows.view(-1, self.window_size, self.window_size, C)
        x = window_reverse(attn_windows, self.window_size, H, W)
        x = x[:, :self.input_resolution[0], :self.input_resolution[1]].contiguous().view(
            B, -1, C)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):

    def __init__(self, img_size, patch_size=4, in_chans=3, embed_dim=96, use_conv_embed=False,
                 norm_layer=None, is_stem=False):
        super().__init__()
        self.img_size = img_size
        self.patches_resolution = (img_size[0] // patch_size, img_size[1] // patch_size)
        if use_conv_embed:
            kernel_size, padding, stride = (7, 2, 4) if is_stem else (3, 1, 2)
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride,
                                  padding=padding)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size,
                                  stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        B, C, H, W = x.shape
        assert H == self.img_size[0] and W == self.img_size[1], 'input size is fixed'
        x = self.proj(x).flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x


class BasicLayer(nn.Module):

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, expand_size,
                 mlp_ratio, qkv_bias, qk_scale, pool_method, focal_level, focal_window,
                 use_conv_embed, downsample):
        super().__init__()
        self.input_resolution = input_resolution
        self.blocks = nn.ModuleList([
            FocalTransformerBlock(dim, input_resolution, num_heads, window_size, expand_size,
                                  mlp_ratio, qkv_bias, qk_scale, pool_method, focal_level,
                                  focal_window) for _ in range(depth)
        ])
        self.downsample = None
        if downsample is not None:
            self.downsample = downsample(img_size=input_resolution, patch_size=2, in_chans=dim,
                                         embed_dim=2 * dim, use_conv_embed=use_conv_embed,
                                         norm_layer=nn.LayerNorm, is_stem=False)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *self.input_resolution)
            x = self.downsample(x)
        return x


class FocalTransformer(nn.Module):
    """Official classifier. ``forward`` returns logits; ``forward_features`` the pooled,
    normed stage-4 features; ``stage_outputs`` the per-layer token maps (after downsample)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.,
                 qkv_bias=True, qk_scale=None, patch_norm=True, use_conv_embed=False,
                 focal_levels=(2, 2, 2, 2), focal_windows=(7, 5, 3, 1),
                 expand_sizes=(3, 3, 3, 3), pool_method='fc'):
        super().__init__()
        self.num_layers = len(depths)
        self.num_features = int(embed_dim * 2**(self.num_layers - 1))
        self.patch_embed = PatchEmbed((img_size, img_size), patch_size, in_chans, embed_dim,
                                      use_conv_embed, nn.LayerNorm if patch_norm else None,
                                      is_stem=True)
        res = self.patch_embed.patches_resolution
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                int(embed_dim * 2**i), (res[0] // 2**i, res[1] // 2**i), depths[i],
                num_heads[i], window_size, expand_sizes[i], mlp_ratio, qkv_bias, qk_scale,
                pool_method, focal_levels[i], focal_windows[i], use_conv_embed,
                PatchEmbed if i < self.num_layers - 1 else None))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02, a=-2., b=2.)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def stage_outputs(self, x):
        x = self.patch_embed(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs

    def forward_features(self, x):
        x = self.stage_outputs(x)[-1]
        x = self.norm(x)
        return x.mean(1)

    def forward(self, x):
        return self.head(self.forward_features(x))
