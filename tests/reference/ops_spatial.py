#!/usr/bin/python3
"""ops_spatial.py — PyTorch reference outputs for the spatial ops
(tests/lua/test_patch_embed.lua, test_interpolate.lua, test_grid_sample.lua).

    /usr/bin/python3 tests/reference/ops_spatial.py    # Debian's torch, CPU

Writes tests/data/ops/{patch_embed,interpolate,grid_sample}.safetensors. For
every case `<c>`: the inputs, the output `<c>.y`, a fixed random upstream
gradient `<c>.gy`, and the gradients of sum(y * gy) with respect to every
input (`<c>.g<input>`). Scalar arguments go into the metadata as exact
decimal strings (Python's repr round-trips a double). All f32.
"""
import os

import torch
import torch.nn.functional as F

from st import save

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "data", "ops"))


def run_case(tensors, name, fn, inputs):
    """Runs fn(*inputs.values()), stores inputs, output, upstream grad and input grads."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(*leaves.values())
    gy = torch.randn(y.shape)
    (y * gy).sum().backward()
    for k, v in leaves.items():
        tensors[f"{name}.{k}"] = v.detach()
        tensors[f"{name}.g{k}"] = v.grad
    tensors[f"{name}.y"] = y.detach()
    tensors[f"{name}.gy"] = gy


def patch_embed():
    t, meta = {}, {}
    cases = [  # name, x shape, D, p, bias
        ("a", (2, 3, 8, 9), 5, 4, True),    # W not a multiple of p: the last column is dropped
        ("b", (1, 2, 7, 11), 4, 3, False),  # no bias, both H and W floored
        ("c", (3, 1, 6, 6), 3, 2, True),
    ]
    for name, xs, d, p, bias in cases:
        inputs = {"x": torch.randn(xs), "w": torch.randn(d, xs[1], p, p)}
        if bias:
            inputs["b"] = torch.randn(d)
        meta[f"{name}.p"] = str(p)
        run_case(t, name, lambda x, w, b=None, p=p: F.conv2d(x, w, b, stride=p), inputs)
    save(os.path.join(OUT, "patch_embed.safetensors"), t, meta)


def interpolate():
    t, meta = {}, {}
    cases = [  # name, x shape, (sy, sx)
        ("pos6", (1, 3, 14, 14), (6.1 / 14, 6.1 / 14)),  # the local-crop positional embedding: 14 -> 6
        ("pos14", (1, 2, 14, 14), (14.1 / 14, 14.1 / 14)),  # 14 -> 14 with the +0.1 scale (the ViT skips this)
        ("up", (2, 1, 5, 7), (2.5, 1.7)),  # non-square, non-integer upsampling
        ("down", (1, 2, 9, 11), (0.45, 0.8)),
        ("mixed", (1, 3, 4, 13), (3.0, 0.25)),  # up in y, strong down in x (taps clamp at both borders)
    ]
    for name, xs, (sy, sx) in cases:
        meta[f"{name}.scale"] = f"{sy!r},{sx!r}"
        fn = lambda x, sy=sy, sx=sx: F.interpolate(x, scale_factor=(sy, sx), mode="bicubic", align_corners=False)
        run_case(t, name, fn, {"x": torch.randn(xs)})
        if xs[2:] == t[f"{name}.y"].shape[2:]:
            # PyTorch 1.13's CPU backward copies the gradient when the input and output sizes
            # are equal, although its forward resamples (14 -> 14 at 14.1/14 is a shift, not the
            # identity). Store the true transpose of the forward map instead: column k of the
            # map is the forward of the k-th one-hot plane.
            h, w = xs[2:]
            basis = torch.eye(h * w).view(h * w, 1, h, w)
            a = fn(basis).reshape(h * w, -1).double()  # [input pixel, output pixel]
            gy = t[f"{name}.gy"].reshape(xs[0] * xs[1], -1).double()
            t[f"{name}.gx"] = (gy @ a.t()).float().reshape(xs)
    save(os.path.join(OUT, "interpolate.safetensors"), t, meta)


def overlap_grid(box_v, inter, s, flip):
    """method.md 5.6: the S x S grid of the intersection `inter` in the frame of crop `box_v`."""
    x, y, w, h = box_v
    x0, y0, x1, y1 = inter
    a, b, da, db = (x0 - x) / w, (y0 - y) / h, (x1 - x0) / w, (y1 - y0) / h
    j = torch.arange(s, dtype=torch.float64)
    u = (a + j * da / (s - 1)).view(1, s).expand(s, s)
    v = (b + j * db / (s - 1)).view(s, 1).expand(s, s)
    if flip:
        u = 1 - u
    return torch.stack([2 * u - 1, 2 * v - 1], dim=-1).float()


def grid_sample():
    t = {}
    fn = lambda inp, grid: F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # random points, some outside the map (|g| up to 1.3)
    run_case(t, "rand", fn, {"inp": torch.randn(2, 3, 5, 6), "grid": torch.rand(2, 4, 5, 2) * 2.6 - 1.3})
    # SERE overlap grids on a 6 x 6 map: image 0 a local crop inside a global one (local frame: every
    # border point on the crop edge), image 1 the global frame of a flipped crop, image 2 no overlap (-2).
    q, k = (10.0, 20.0, 50.0, 40.0), (0.0, 0.0, 100.0, 100.0)
    inter = (10.0, 20.0, 60.0, 60.0)
    grids = [overlap_grid(q, inter, 5, False), overlap_grid(k, inter, 5, True), torch.full((5, 5, 2), -2.0)]
    run_case(t, "overlap", fn, {"inp": torch.randn(3, 4, 6, 6), "grid": torch.stack(grids)})
    # points exactly at token centres and on the map's edges and corners, where the grid gradient is one-sided
    w = 4
    c = torch.tensor([-1.0, -1 + 1 / w, -1 + 3 / w, 0.0, 1 - 1 / w, 1.0])
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    run_case(t, "edges", fn, {"inp": torch.randn(1, 2, w, w), "grid": torch.stack([gx, gy], -1).unsqueeze(0)})
    save(os.path.join(OUT, "grid_sample.safetensors"), t)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    patch_embed()
    interpolate()
    grid_sample()
