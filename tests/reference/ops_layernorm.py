#!/usr/bin/python3
"""ops_layernorm.py — reference data for tests/lua/test_layernorm.lua:
F.layer_norm over the last dim, forward and backward, computed in float64
from float32 inputs (so the reference carries no f32 rounding of its own),
stored as float32 in tests/data/ops/layernorm.safetensors.

    /usr/bin/python3 tests/reference/ops_layernorm.py     # Debian's python3-torch

Per case `c`: c.x (input), c.w / c.b (affine, absent for no affine), c.g
(a fixed random upstream gradient), c.y (output), c.gx / c.gw / c.gb (input
gradients for c.g); metadata c.eps."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "ops", "layernorm.safetensors")

# name: (shape, affine, eps, offset, scale). Case "far" has rows far from
# zero (mean 100, std 0.1), where E[x^2] - mean^2 in f32 loses digits.
CASES = {
    "small": ((3, 5, 7), True, 1e-5, 1.0, 2.0),
    "odd": ((4, 33), True, 1e-6, 0.0, 1.0),
    "plain": ((5, 16), False, 1e-5, -0.5, 1.0),
    "far": ((4, 8), True, 1e-5, 100.0, 0.1),
}


def main():
    torch.manual_seed(0)
    out, meta = {}, {}
    for name, (shape, affine, eps, offset, scale) in CASES.items():
        d = shape[-1]
        x = (torch.randn(shape) * scale + offset).float()
        g = torch.randn(shape).float()
        w = (torch.rand(d) + 0.5).float() if affine else None
        b = torch.randn(d).float() if affine else None
        xd = x.double().requires_grad_()
        wd = w.double().requires_grad_() if affine else None
        bd = b.double().requires_grad_() if affine else None
        y = F.layer_norm(xd, (d,), wd, bd, eps)
        y.backward(g.double())
        out.update({f"{name}.x": x, f"{name}.g": g, f"{name}.y": y.float(), f"{name}.gx": xd.grad.float()})
        if affine:
            out.update({f"{name}.w": w, f"{name}.b": b, f"{name}.gw": wd.grad.float(), f"{name}.gb": bd.grad.float()})
        meta[f"{name}.eps"] = repr(eps)
    st.save(OUT, out, meta)


if __name__ == "__main__":
    main()
