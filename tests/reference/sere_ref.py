"""sere_ref.py — the project's own PyTorch reference of iBOT + SERE, written
from docs/method.md (the specification) and nothing else. It exists to
produce reference numbers for sere's tests (see make_model_data.py), so it
favours being obviously right over being fast: plain modules, explicit
formulas, float64 friendly (every function works in whatever dtype its
inputs have; make_model_data.py runs it in float64).

Section numbers below refer to docs/method.md.

Module / parameter names follow the reference implementation's state_dict
names (method.md 10.4):

  VisionTransformer   cls_token, pos_embed, patch_embed.proj.*, blocks.{i}.*,
                      norm.*, masked_embed, {channel_sere, pixel_sere,
                      channel_sere_local, pixel_sere_local}.{projection.0.*,
                      predictor.0.weight, predictor.1.*}
  IBOTHead            mlp.0.*, mlp.2.*, mlp.4.*, last_layer.weight_g,
                      last_layer.weight_v (+ last_layer2.* when shared)
  SereModel           backbone.<VisionTransformer names>, head.<IBOTHead names>

Tensor conventions (method.md "Conventions"): tokens row-major
(n = r * Wp + c); several crops of one resolution are concatenated crop-major
(all B images of crop 1, then crop 2, ...); grids hold (x, y) in [-1, 1].
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-6
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


# --------------------------------------------------------------------------
# initialisation (method.md 2.8, 3.1, 4.6)

def trunc_normal_(t, std=0.02):
    """Normal(0, std) truncated at the ABSOLUTE bounds -2, +2 (2.8)."""
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2.0, b=2.0)


def default_uniform_(t, fan_in):
    """The framework default for convolution / linear weights and biases:
    uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)]."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def gelu(x):
    """Exact GELU, the erf form (2.5)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class GELU(nn.Module):
    def forward(self, x):
        return gelu(x)


# --------------------------------------------------------------------------
# ViT pieces (method.md 2.2 - 2.6)

class PatchEmbed(nn.Module):
    """Conv p x p, stride p, no padding, with bias (2.2). -> B x D x Hp x Wp."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        fan_in = in_chans * patch_size * patch_size
        default_uniform_(self.proj.weight, fan_in)
        default_uniform_(self.proj.bias, fan_in)

    def forward(self, x):
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 (D -> hidden, bias), exact GELU, fc2 (hidden -> D, bias)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """qkv: [Q | K | V] each of width D, head j owns features j*d..(j+1)*d-1
    within each; softmax(Q_j K_j^T d^-1/2) V_j; heads concatenated; proj."""

    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 B h T d
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj(o)


def drop_path(x, rate, training, keep=None):
    """Stochastic depth per sample (2.6). `keep` (shape [B], values 0/1) may
    be supplied so that tests are deterministic; otherwise it is drawn as
    floor(1 - rate + U[0,1)). The kept branch is divided by 1 - rate."""
    if rate == 0.0 or not training:
        return x
    B = x.shape[0]
    if keep is None:
        keep = torch.floor(1.0 - rate + torch.rand(B, dtype=x.dtype, device=x.device))
    keep = keep.to(x.dtype).reshape((B,) + (1,) * (x.dim() - 1))
    return x * (keep / (1.0 - rate))


class Block(nn.Module):
    """Pre-norm block (2.5): x += DP(Attn(LN1 x)); x += DP(MLP(LN2 x))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x, keep=None):
        """keep: None, or a [2, B] tensor of keep flags (row 0 for the
        attention branch, row 1 for the MLP branch)."""
        ka = None if keep is None else keep[0]
        km = None if keep is None else keep[1]
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training, ka)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training, km)
        return x


# --------------------------------------------------------------------------
# bicubic interpolation of the positional table (2.4)

def cubic_kernel(t, A=-0.75):
    t = abs(t)
    if t <= 1.0:
        return ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
    if t < 2.0:
        return ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A
    return 0.0


def bicubic_matrix(n_in, scale, dtype=torch.float64, A=-0.75):
    """The (n_out x n_in) matrix of a 1-D bicubic resampling with scale
    factor `scale`, corners not aligned, coordinates from the scale factor
    itself: output j reads src = (j + 0.5) / scale - 0.5, taps at
    floor(src) - 1 .. floor(src) + 2 clamped to [0, n_in - 1], no
    antialiasing; n_out = floor(n_in * scale)."""
    n_out = math.floor(n_in * scale)
    M = torch.zeros(n_out, n_in, dtype=dtype)
    for j in range(n_out):
        src = (j + 0.5) / scale - 0.5
        f = math.floor(src)
        t = src - f
        w = (cubic_kernel(t + 1.0, A), cubic_kernel(t, A), cubic_kernel(1.0 - t, A), cubic_kernel(2.0 - t, A))
        for k in range(4):
            idx = min(max(f - 1 + k, 0), n_in - 1)
            M[j, idx] += w[k]
    return M


def bicubic_resize(img, sy, sx):
    """img [..., H, W] -> [..., floor(H*sy), floor(W*sx)] with the rules of
    bicubic_matrix along each axis (separable, linear, differentiable)."""
    My = bicubic_matrix(img.shape[-2], sy, img.dtype)
    Mx = bicubic_matrix(img.shape[-1], sx, img.dtype)
    return My @ img @ Mx.transpose(0, 1)


def interpolate_pos_embed(pos_embed, Hp, Wp, use_torch=False):
    """pos_embed [1, 1 + M*M, D] -> [1, 1 + Hp*Wp, D] (2.4): the class entry
    as is; the M x M grid of patch entries resampled with scale factors
    s_y = (Hp + 0.1) / M (rows) and s_x = (Wp + 0.1) / M (columns).
    use_torch=True uses F.interpolate instead of the explicit matrices (the
    two are checked against each other in make_model_data.py)."""
    N = pos_embed.shape[1] - 1
    M = int(round(math.sqrt(N)))
    assert M * M == N
    D = pos_embed.shape[2]
    cls = pos_embed[:, :1]
    grid = pos_embed[0, 1:].reshape(M, M, D).permute(2, 0, 1)  # D x M x M
    sy, sx = (Hp + 0.1) / M, (Wp + 0.1) / M
    if use_torch:
        out = F.interpolate(grid.unsqueeze(0), scale_factor=(sy, sx), mode="bicubic", align_corners=False)[0]
    else:
        out = bicubic_resize(grid, sy, sx)
    assert out.shape[-2:] == (Hp, Wp), (out.shape, Hp, Wp)
    out = out.permute(1, 2, 0).reshape(1, Hp * Wp, D)
    return torch.cat([cls, out], dim=1)


# --------------------------------------------------------------------------
# SERE relation heads (section 4)

class SEREHead(nn.Module):
    """projection = [BN, ReLU]; predictor = [Conv1x1 (no bias), BN, ReLU],
    stacked on the projection output (4.1). BatchNorms: eps 1e-5, momentum
    0.1, affine, run in training mode (batch statistics; 4.7)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.projection = nn.Sequential(nn.BatchNorm2d(dim, eps=BN_EPS, momentum=BN_MOMENTUM), nn.ReLU())
        self.predictor = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )
        default_uniform_(self.predictor[0].weight, dim)

    def features(self, x, Hp, Wp):
        """x: [B, N, D] patch tokens (pre final LN) -> (Z, P), both
        [B, D, Hp, Wp]."""
        B, N, D = x.shape
        assert N == Hp * Wp and D == self.dim
        fm = x.transpose(1, 2).reshape(B, D, Hp, Wp)
        z = self.projection(fm)
        p = self.predictor(z)
        return z, p


def channel_relation(fm, sigma):
    """fm [B, D, H, W] -> (fm/sigma)(fm/sigma)^T over positions, [B, D, D]."""
    f = fm.flatten(2) / sigma
    return f @ f.transpose(1, 2)


def pixel_relation(fm, num_heads):
    """fm [B, D, H, W] -> per contiguous channel group j of width d:
    Z_j Z_j^T d^-1/2, [B, h, N, N] (rows = queries, columns = keys)."""
    B, D = fm.shape[:2]
    d = D // num_heads
    f = fm.flatten(2).reshape(B, num_heads, d, -1).transpose(2, 3)  # B h N d
    return (f @ f.transpose(2, 3)) * d ** -0.5


class ChannelSERE(SEREHead):
    """C^z, C^p with the hard-wired sigma (14 global, 6 local; 4.2)."""

    def __init__(self, dim, sigma):
        super().__init__(dim)
        self.sigma = sigma

    def forward(self, x, Hp, Wp):
        z, p = self.features(x, Hp, Wp)
        return channel_relation(z, self.sigma), channel_relation(p, self.sigma)


class PixelSERE(SEREHead):
    """S^z, S^p per head group, scaled by d^-1/2 (4.3)."""

    def __init__(self, dim, num_heads):
        super().__init__(dim)
        self.num_heads = num_heads

    def forward(self, x, Hp, Wp):
        z, p = self.features(x, Hp, Wp)
        return pixel_relation(z, self.num_heads), pixel_relation(p, self.num_heads)


# --------------------------------------------------------------------------
# the backbone (section 2 + 4)

class VisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                 drop_path_rate=0.0, masked_im_modeling=True, sigma_global=14.0, sigma_local=6.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, rates[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        if masked_im_modeling:
            self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim))
        else:
            self.masked_embed = None
        self.channel_sere = ChannelSERE(embed_dim, sigma_global)
        self.pixel_sere = PixelSERE(embed_dim, num_heads)
        self.channel_sere_local = ChannelSERE(embed_dim, sigma_local)
        self.pixel_sere_local = PixelSERE(embed_dim, num_heads)
        # method initialisation (2.8): trunc-normal for the tables and every
        # backbone linear, zero biases, LN 1/0; conv and SERE heads keep the
        # defaults set by their constructors; mask embedding zeros.
        trunc_normal_(self.pos_embed)
        trunc_normal_(self.cls_token)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def pos_embed_for(self, H, W, Hp, Wp):
        M2 = self.pos_embed.shape[1] - 1
        if Hp * Wp == M2 and H == W:
            return self.pos_embed
        return interpolate_pos_embed(self.pos_embed, Hp, Wp)

    def prepare_tokens(self, x, mask=None):
        """2.3: patch embedding, mask replacement (mask [B, Hp, Wp] bool),
        flatten, prepend class token, add (interpolated) positions."""
        B, _, H, W = x.shape
        f = self.patch_embed(x)  # B D Hp Wp
        Hp, Wp = f.shape[-2:]
        if mask is not None:
            assert mask.shape == (B, Hp, Wp)
            e = self.masked_embed.to(f.dtype).reshape(1, -1, 1, 1)
            f = torch.where(mask.unsqueeze(1), e, f)
        t = f.flatten(2).transpose(1, 2)  # B N D
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)
        return t + self.pos_embed_for(H, W, Hp, Wp), Hp, Wp

    def forward_features(self, x, mask=None, keep=None):
        """Returns (tokens after the final LN [B, 1+N, D], last-block patch
        tokens before the final LN [B, N, D], Hp, Wp). keep: None or a
        [depth, 2, B] tensor of drop-path keep flags."""
        t, Hp, Wp = self.prepare_tokens(x, mask)
        for i, blk in enumerate(self.blocks):
            t = blk(t, None if keep is None else keep[i])
        pre = t[:, 1:, :]
        return self.norm(t), pre, Hp, Wp

    def sere_heads(self, local):
        if local:
            return self.channel_sere_local, self.pixel_sere_local
        return self.channel_sere, self.pixel_sere

    def forward(self, x, mask=None, local=False, keep=None):
        """The five backbone outputs of 2.7: tokens, C^z, C^p, S^z, S^p."""
        tokens, pre, Hp, Wp = self.forward_features(x, mask, keep)
        ch, px = self.sere_heads(local)
        cz, cp = ch(pre, Hp, Wp)
        sz, sp = px(pre, Hp, Wp)
        return tokens, cz, cp, sz, sp


# --------------------------------------------------------------------------
# iBOT head (section 3)

class WeightNormLinear(nn.Module):
    """No-bias linear with W_k = g_k v_k / ||v_k|| (3.2). g: [K, 1], v: [K, in]."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        default_uniform_(self.weight_v, in_dim)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def weight(self):
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x):
        return x @ self.weight().transpose(0, 1)


class IBOTHead(nn.Module):
    def __init__(self, in_dim, out_dim, hidden_dim=2048, bottleneck_dim=256, norm_last_layer=True,
                 shared_head=True, patch_out_dim=None):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), GELU(),
            nn.Linear(hidden_dim, hidden_dim), GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)
        if shared_head:
            self.last_layer2 = self.last_layer  # registered twice: both names in state_dict
        else:
            self.last_layer2 = WeightNormLinear(bottleneck_dim, patch_out_dim or out_dim)
            if norm_last_layer:
                self.last_layer2.weight_g.requires_grad_(False)

    def bottleneck(self, x):
        """MLP then L2 normalisation y / max(||y||, 1e-12)."""
        return F.normalize(self.mlp(x), p=2, dim=-1, eps=1e-12)

    def forward(self, x):
        """[B, D] -> [B, K]; [B, 1+N, D] -> ([B, K], [B, N, K_patch])."""
        y = self.bottleneck(x)
        if x.dim() == 2:
            return self.last_layer(y)
        return self.last_layer(y[:, 0]), self.last_layer2(y[:, 1:])


class SereModel(nn.Module):
    """backbone + head, named as the reference's multi-crop wrapper."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_crops(self, x, mask=None, local=False, keep=None):
        """One network call on crops of one resolution. Returns a dict:
        cls [n, K], patch [n, N, K], channel_z/_p [n, D, D],
        pixel_z/_p [n, h, N, N], maps {channel: (Z, P), pixel: (Z, P)},
        Hp, Wp."""
        tokens, pre, Hp, Wp = self.backbone.forward_features(x, mask, keep)
        ch, px = self.backbone.sere_heads(local)
        cz_map, cp_map = ch.features(pre, Hp, Wp)
        pz_map, pp_map = px.features(pre, Hp, Wp)
        cls, patch = self.head(tokens)
        return {
            "tokens": tokens, "cls": cls, "patch": patch,
            "channel_z": channel_relation(cz_map, ch.sigma), "channel_p": channel_relation(cp_map, ch.sigma),
            "pixel_z": pixel_relation(pz_map, px.num_heads), "pixel_p": pixel_relation(pp_map, px.num_heads),
            "maps": {"channel": (cz_map, cp_map), "pixel": (pz_map, pp_map)},
            "Hp": Hp, "Wp": Wp, "num_heads": px.num_heads,
        }


# --------------------------------------------------------------------------
# overlap grids (5.6) and relation alignment (6.2, 6.3)

def overlap_grids(map_a, map_b, S, dtype=torch.float64):
    """Two crop mappings (x, y, w, h, f) in original-image pixels -> the
    pair of S x S x 2 grids (grid in crop a's frame, grid in crop b's
    frame), (x, y) in [-1, 1]; both filled with -2 when the crops do not
    overlap (strictly)."""
    xa, ya, wa, ha, _ = [float(v) for v in map_a]
    xb, yb, wb, hb, _ = [float(v) for v in map_b]
    X0, Y0 = max(xa, xb), max(ya, yb)
    X1, Y1 = min(xa + wa, xb + wb), min(ya + ha, yb + hb)
    if not (X0 < X1 and Y0 < Y1):
        full = torch.full((S, S, 2), -2.0, dtype=dtype)
        return full, full.clone()
    out = []
    for (x, y, w, h, f) in (map_a, map_b):
        x, y, w, h = float(x), float(y), float(w), float(h)
        a, b = (X0 - x) / w, (Y0 - y) / h
        da, db = (X1 - X0) / w, (Y1 - Y0) / h
        k = torch.arange(S, dtype=dtype)
        u = a + k * da / (S - 1)  # along columns j
        t = b + k * db / (S - 1)  # along rows i
        if int(f):
            u = 1.0 - u
        g = torch.empty(S, S, 2, dtype=dtype)
        g[:, :, 0] = (2.0 * u - 1.0).unsqueeze(0).expand(S, S)
        g[:, :, 1] = (2.0 * t - 1.0).unsqueeze(1).expand(S, S)
        out.append(g)
    return out[0], out[1]


def grid_sample_ref(fm, grid):
    """Explicit bilinear sampling of 6.2 (corners not aligned, zero padding):
    fm [B, C, H, W], grid [B, Ho, Wo, 2] -> [B, C, Ho, Wo]. Slow; used to
    check F.grid_sample."""
    B, C, H, W = fm.shape
    gx, gy = grid[..., 0], grid[..., 1]
    px = ((gx + 1) * W - 1) / 2
    py = ((gy + 1) * H - 1) / 2
    x0, y0 = torch.floor(px), torch.floor(py)
    ax, ay = px - x0, py - y0
    out = fm.new_zeros(B, C, *grid.shape[1:3])
    for dy, wy in ((0, 1 - ay), (1, ay)):
        for dx, wx in ((0, 1 - ax), (1, ax)):
            xi, yi = x0 + dx, y0 + dy
            valid = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
            xc = xi.clamp(0, W - 1).long()
            yc = yi.clamp(0, H - 1).long()
            idx = (yc * W + xc).reshape(B, 1, -1).expand(B, C, -1)
            v = fm.reshape(B, C, H * W).gather(2, idx).reshape(B, C, *grid.shape[1:3])
            out = out + v * (wx * wy * valid.to(fm.dtype)).unsqueeze(1)
    return out


def grid_sample(fm, grid):
    return F.grid_sample(fm, grid.to(fm.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def align_relation(R, grid_rows, grid_cols, Hf, Wf):
    """Two-pass alignment (6.3): R [B, h, N, N] on an Hf x Wf token grid,
    grid_rows [B, Sr, Sr, 2] (queries), grid_cols [B, Sc, Sc, 2] (keys).
    Keys first (each row viewed as a map, sampled at the Sc^2 points), then
    queries. Returns [B, h, Sr^2, Sc^2]."""
    B, h, N, N2 = R.shape
    assert N == N2 == Hf * Wf
    Sr2 = grid_rows.shape[1] * grid_rows.shape[2]
    Sc2 = grid_cols.shape[1] * grid_cols.shape[2]
    r1 = grid_sample(R.reshape(B, h * N, Hf, Wf), grid_cols)  # B, h*N, Sc, Sc
    r1 = r1.reshape(B, h, N, Sc2).transpose(2, 3).reshape(B, h * Sc2, Hf, Wf)
    r2 = grid_sample(r1, grid_rows)  # B, h*Sc2, Sr, Sr
    return r2.reshape(B, h, Sc2, Sr2).transpose(2, 3)


def aligned_relation_from_features(fm, grid_rows, grid_cols, num_heads):
    """Shortcut (1): sample the feature map first, then form the relation:
    (G_r Z_j)(G_c Z_j)^T d^-1/2 per head group. Equals
    align_relation(pixel_relation(fm, h), grid_rows, grid_cols) exactly in
    exact arithmetic (bilinear sampling is linear)."""
    B, D = fm.shape[:2]
    d = D // num_heads
    zr = grid_sample(fm, grid_rows).flatten(2).reshape(B, num_heads, d, -1).transpose(2, 3)  # B h Sr2 d
    zc = grid_sample(fm, grid_cols).flatten(2).reshape(B, num_heads, d, -1).transpose(2, 3)  # B h Sc2 d
    return (zr @ zc.transpose(2, 3)) * d ** -0.5


# --------------------------------------------------------------------------
# schedules (7.1)

def teacher_temp_schedule(warmup_temp, final_temp, warmup_epochs, epochs, start_epoch=0):
    """Per-epoch teacher temperature: held at warmup_temp for start_epoch
    epochs (the patch schedule with pred_start_epoch > 0), then
    linspace(warmup, final, warmup_epochs) (both ends included), then final."""
    out = [warmup_temp] * start_epoch
    for e in range(warmup_epochs):
        out.append(warmup_temp + (final_temp - warmup_temp) * e / (warmup_epochs - 1) if warmup_epochs > 1 else final_temp)
    out += [final_temp] * max(0, epochs - warmup_epochs - start_epoch)
    return out[:epochs]


# --------------------------------------------------------------------------
# losses (section 7)

def soft_ce(t_prob, s_logits):
    """CE(t, s) = -sum_k t_k log_softmax(s)_k over the last axis."""
    return -(t_prob * torch.log_softmax(s_logits, dim=-1)).sum(-1)


def ibot_loss(student_cls, student_patch, teacher_cls, teacher_patch, masks, center, center2, n_global,
              teacher_temp, teacher_patch_temp, student_temp=0.1, center_momentum=0.9, center_momentum2=0.9):
    """iBOT [CLS] loss (7.2), masked-patch loss (7.3) and the centre update
    (7.4; single process, accum_iter 1).

    student_cls   [(G+L)*B, K]  all student crops, crop-major (globals first)
    student_patch [G*B, N, K]   masked student global crops
    teacher_cls   [G*B, K], teacher_patch [G*B, N, K]
    masks         [G*B, Hp, Wp] (bool) or [G*B, N]
    center [1, K], center2 [1, 1, K]
    Returns dict(cls, mim, center, center2) (new centres, computed from the
    raw teacher logits after the loss, which uses the old centres)."""
    G = n_global
    B = teacher_cls.shape[0] // G
    n_crops = student_cls.shape[0] // B
    t_cls = torch.softmax((teacher_cls.detach() - center) / teacher_temp, dim=-1).chunk(G)
    t_patch = torch.softmax((teacher_patch.detach() - center2) / teacher_patch_temp, dim=-1).chunk(G)
    s_cls = (student_cls / student_temp).chunk(n_crops)
    s_patch = (student_patch / student_temp).chunk(G)
    m = masks.reshape(masks.shape[0], -1).to(student_patch.dtype).chunk(G)
    l_cls, n1, l_mim, n2 = 0.0, 0, 0.0, 0
    for g in range(G):
        for v in range(n_crops):
            if v == g:
                ce = soft_ce(t_patch[g], s_patch[v])  # B x N
                per_img = (ce * m[v]).sum(-1) / m[v].sum(-1).clamp(min=1.0)
                l_mim = l_mim + per_img.mean()
                n2 += 1
            else:
                l_cls = l_cls + soft_ce(t_cls[g], s_cls[v]).mean()
                n1 += 1
    with torch.no_grad():
        rows = teacher_cls.shape[0]
        c_batch = teacher_cls.sum(0, keepdim=True) / rows
        c2_batch = teacher_patch.mean(1, keepdim=True).sum(0, keepdim=True) / rows
        new_c = center * center_momentum + c_batch * (1 - center_momentum)
        new_c2 = center2 * center_momentum2 + c2_batch * (1 - center_momentum2)
    return {"cls": l_cls / n1, "mim": l_mim / n2, "center": new_c, "center2": new_c2}


def ibot_mim_shortcut(student_bneck, teacher_bneck, student_last, teacher_last, masks, center2, n_global,
                      teacher_patch_temp, student_temp=0.1, center_momentum2=0.9):
    """Shortcut (2): the MIM loss and the patch-centre update from the
    prototype layer applied only where the loss looks.

    student_bneck, teacher_bneck: [G*B, N, bottleneck] L2-normalised patch
    bottlenecks; student_last / teacher_last: the effective last-layer
    weights [K, bottleneck]. Student and teacher logits are formed only at
    the masked tokens; the patch centre uses last(mean of teacher
    bottlenecks over tokens and rows) (the last layer has no bias, so it
    commutes with the mean). Returns (mim, new center2)."""
    G = n_global
    rows = teacher_bneck.shape[0]
    B = rows // G
    m = masks.reshape(rows, -1).bool()
    total = 0.0
    for g in range(G):
        sl = slice(g * B, (g + 1) * B)
        mg = m[sl]
        sb = student_bneck[sl][mg]  # [#masked, bneck]
        tb = teacher_bneck[sl].detach()[mg]
        s = (sb @ student_last.transpose(0, 1)) / student_temp
        t = torch.softmax(((tb @ teacher_last.detach().transpose(0, 1)) - center2.reshape(1, -1)) / teacher_patch_temp, -1)
        ce = soft_ce(t, s)  # [#masked]
        img = torch.arange(B, device=mg.device).unsqueeze(1).expand(B, mg.shape[1])[mg]
        per_img = torch.zeros(B, dtype=ce.dtype).index_add(0, img, ce)
        per_img = per_img / mg.sum(-1).to(ce.dtype).clamp(min=1.0)
        total = total + per_img.mean()
    with torch.no_grad():
        mean_b = teacher_bneck.reshape(-1, teacher_bneck.shape[-1]).mean(0, keepdim=True)
        c2_batch = (mean_b @ teacher_last.transpose(0, 1)).reshape(1, 1, -1)
        new_c2 = center2 * center_momentum2 + c2_batch * (1 - center_momentum2)
    return total / G, new_c2


def sere_pixel_terms(teacher_gg, student_gg, teacher_raw_global, student_raw_local, grids_lg_local,
                     grids_lg_global, n_global, n_local, global_hw, local_hw, temp_pixel=0.5,
                     teacher_maps=None, student_local_maps=None, num_heads=None):
    """SERE pixel loss terms (7.5), in this order: global/global (g, v != g)
    for g = 0.., v = 0.., then local/global for index g*L + l.

    teacher_gg, student_gg  [G*B, h, Sr^2, Sc^2]  aligned relations
    teacher_raw_global      [G*B, h, Ng, Ng]     raw teacher S^z
    student_raw_local       [L*B, h, Nl, Nl]     raw student local S^p
    grids_lg_local/_global  [G*L, B, S, S, 2]    index g*L + l
    global_hw / local_hw    (Hf, Wf) token grids of the two crop sizes.
    If teacher_maps [G*B, D, Hg, Wg] and student_local_maps [L*B, D, Hl, Wl]
    are given, the local/global alignment uses the feature-first shortcut
    instead of the raw relations (which may then be None)."""
    G, L = n_global, n_local
    tg = teacher_gg.detach().chunk(G)
    sg = student_gg.chunk(G)
    terms = []
    for g in range(G):
        for v in range(G):
            if v != g:
                terms.append(soft_ce(torch.softmax(tg[g] / temp_pixel, -1), sg[v]).mean())
    for g in range(G):
        for l in range(L):
            gl, gg = grids_lg_local[g * L + l], grids_lg_global[g * L + l]
            if teacher_maps is None:
                B = teacher_raw_global.shape[0] // G
                traw = teacher_raw_global.detach()[g * B:(g + 1) * B] / temp_pixel
                sraw = student_raw_local[l * B:(l + 1) * B]
                at = align_relation(traw, gg, gg, *global_hw)
                as_ = align_relation(sraw, gl, gl, *local_hw)
            else:
                B = teacher_maps.shape[0] // G
                at = aligned_relation_from_features(teacher_maps.detach()[g * B:(g + 1) * B], gg, gg, num_heads) / temp_pixel
                as_ = aligned_relation_from_features(student_local_maps[l * B:(l + 1) * B], gl, gl, num_heads)
            terms.append(soft_ce(torch.softmax(at, -1), as_).mean())
    return terms


def sere_channel_terms(teacher_c, student_c_global, student_c_local, n_global, n_local, temp_channel=0.1):
    """SERE channel loss terms (7.6): for g = 0..G-1: (student global v != g,
    in order), then (student local l = 0..L-1)."""
    G, L = n_global, n_local
    q = torch.softmax(teacher_c.detach() / temp_channel, -1).chunk(G)
    sg = student_c_global.chunk(G)
    sl = student_c_local.chunk(L)
    terms = []
    for g in range(G):
        for v in range(G):
            if v != g:
                terms.append(soft_ce(q[g], sg[v]).mean())
        for l in range(L):
            terms.append(soft_ce(q[g], sl[l]).mean())
    return terms


def total_loss(l_ibot, l_pixel, l_channel, alpha, beta):
    """7.7: L_iBOT (4 - alpha - beta) / 2 + alpha L_pixel + beta L_channel,
    with L_iBOT = L_cls + L_mim."""
    return l_ibot * (4.0 - alpha - beta) / 2.0 + alpha * l_pixel + beta * l_channel


# --------------------------------------------------------------------------
# one complete loss evaluation (sections 6 and 7)

def training_loss(student, teacher, global_crops, local_crops, masks, grids_gg_rows, grids_gg_cols,
                  grids_lg_local, grids_lg_global, center, center2, cfg, pixel_path="two_pass",
                  mim_path="full", student_keep_global=None, student_keep_local=None):
    """The loss of one iteration.

    global_crops [G*B, 3, Hg, Wg], local_crops [L*B, 3, Hl, Wl] (crop-major)
    masks [G*B, Hp, Wp] bool; grids_gg_rows / _cols [G*B, S, S, 2]: the
    global/global grid of each global-crop image in that crop's own frame
    (overlap_size[0] for rows, [1] for columns); grids_lg_* [G*L, B, 6, 6, 2].
    cfg: dict with G, L, alpha, beta, teacher_temp, teacher_patch_temp,
    student_temp, temp_pixel, temp_channel.
    pixel_path: "two_pass" (the reference's grid_sample of relations) or
    "features" (shortcut 1). mim_path: "full" or "shortcut" (shortcut 2).
    Returns a dict of every loss term, the new centres and intermediates."""
    G, L = cfg["G"], cfg["L"]
    with torch.no_grad():
        t = teacher.forward_crops(global_crops, None, local=False)
    s = student.forward_crops(global_crops, masks, local=False, keep=student_keep_global)
    sl = student.forward_crops(local_crops, None, local=True, keep=student_keep_local)
    Hg, Wg, Hl, Wl = s["Hp"], s["Wp"], sl["Hp"], sl["Wp"]
    h = s["num_heads"]

    # global/global aligned pixel relations, each crop image with its own grid
    if pixel_path == "two_pass":
        t_gg = align_relation(t["pixel_z"], grids_gg_rows, grids_gg_cols, Hg, Wg)
        s_gg = align_relation(s["pixel_p"], grids_gg_rows, grids_gg_cols, Hg, Wg)
        p_terms = sere_pixel_terms(t_gg, s_gg, t["pixel_z"], sl["pixel_p"], grids_lg_local, grids_lg_global,
                                   G, L, (Hg, Wg), (Hl, Wl), cfg["temp_pixel"])
    elif pixel_path == "features":
        t_gg = aligned_relation_from_features(t["maps"]["pixel"][0], grids_gg_rows, grids_gg_cols, h)
        s_gg = aligned_relation_from_features(s["maps"]["pixel"][1], grids_gg_rows, grids_gg_cols, h)
        p_terms = sere_pixel_terms(t_gg, s_gg, None, None, grids_lg_local, grids_lg_global, G, L, (Hg, Wg),
                                   (Hl, Wl), cfg["temp_pixel"], teacher_maps=t["maps"]["pixel"][0],
                                   student_local_maps=sl["maps"]["pixel"][1], num_heads=h)
    else:
        raise ValueError(pixel_path)
    c_terms = sere_channel_terms(t["channel_z"], s["channel_p"], sl["channel_p"], G, L, cfg["temp_channel"])

    student_cls = torch.cat([s["cls"], sl["cls"]], 0)
    ib = ibot_loss(student_cls, s["patch"], t["cls"], t["patch"], masks, center, center2, G,
                   cfg["teacher_temp"], cfg["teacher_patch_temp"], cfg["student_temp"])
    if mim_path == "shortcut":
        # the head's MLP + L2 normalisation on the tokens of the same
        # forward; the prototype layer only inside ibot_mim_shortcut
        with torch.no_grad():
            tb = teacher.head.bottleneck(t["tokens"])[:, 1:]
            tw = teacher.head.last_layer2.weight()
        sb = student.head.bottleneck(s["tokens"])[:, 1:]
        mim, c2 = ibot_mim_shortcut(sb, tb, student.head.last_layer2.weight(), tw, masks, center2, G,
                                    cfg["teacher_patch_temp"], cfg["student_temp"])
        ib = dict(ib, mim=mim, center2=c2)
    l_pixel = sum(p_terms) / len(p_terms)
    l_channel = sum(c_terms) / len(c_terms)
    l_ibot = ib["cls"] + ib["mim"]
    total = total_loss(l_ibot, l_pixel, l_channel, cfg["alpha"], cfg["beta"])
    return {
        "total": total, "ibot": l_ibot, "cls": ib["cls"], "mim": ib["mim"], "pixel": l_pixel,
        "channel": l_channel, "pixel_terms": torch.stack(p_terms), "channel_terms": torch.stack(c_terms),
        "center": ib["center"], "center2": ib["center2"], "teacher": t, "student_global": s,
        "student_local": sl, "teacher_gg": t_gg, "student_gg": s_gg,
    }
