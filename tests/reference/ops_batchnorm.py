#!/usr/bin/python3
"""ops_batchnorm.py — reference data for tests/lua/test_batchnorm.lua:
F.batch_norm in training mode (batch statistics, running statistics
updated once) and in eval mode, forward and backward, computed in float64
from float32 inputs and stored as float32 in
tests/data/ops/batchnorm.safetensors.

    /usr/bin/python3 tests/reference/ops_batchnorm.py     # Debian's python3-torch

Per case `c`: c.x, c.g (upstream gradient), c.w / c.b (absent without
affine), c.rm / c.rv (running statistics before the call, absent without),
c.y, c.gx, c.gw, c.gb, and for training with running statistics
c.rm_after / c.rv_after; metadata c.training ("1" / "0"), c.momentum, c.eps."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "ops", "batchnorm.safetensors")

# name: (shape, training, affine, running stats, momentum, eps)
CASES = {
    "train4d": ((4, 3, 5, 2), True, True, True, 0.1, 1e-5),
    "train2d": ((6, 5), True, True, False, 0.1, 1e-5),
    "train3d_plain": ((5, 3, 4), True, False, True, 0.3, 1e-3),
    "eval4d": ((3, 4, 2, 3), False, True, True, 0.1, 1e-5),
}


def main():
    torch.manual_seed(0)
    out, meta = {}, {}
    for name, (shape, training, affine, running, momentum, eps) in CASES.items():
        c = shape[1]
        x = (torch.randn(shape) * 1.5 + torch.randn(1, c, *([1] * (len(shape) - 2))) * 2).float()
        g = torch.randn(shape).float()
        w = (torch.rand(c) + 0.5).float() if affine else None
        b = torch.randn(c).float() if affine else None
        rm = torch.randn(c).float() if running else None
        rv = (torch.rand(c) + 0.5).float() if running else None
        xd = x.double().requires_grad_()
        wd = w.double().requires_grad_() if affine else None
        bd = b.double().requires_grad_() if affine else None
        rmd = rm.double() if running else None
        rvd = rv.double() if running else None
        y = F.batch_norm(xd, rmd, rvd, wd, bd, training=training, momentum=momentum, eps=eps)
        y.backward(g.double())
        out.update({f"{name}.x": x, f"{name}.g": g, f"{name}.y": y.float(), f"{name}.gx": xd.grad.float()})
        if affine:
            out.update({f"{name}.w": w, f"{name}.b": b, f"{name}.gw": wd.grad.float(), f"{name}.gb": bd.grad.float()})
        if running:
            out.update({f"{name}.rm": rm, f"{name}.rv": rv})
            if training:
                out.update({f"{name}.rm_after": rmd.float(), f"{name}.rv_after": rvd.float()})
        meta[f"{name}.training"] = "1" if training else "0"
        meta[f"{name}.momentum"] = repr(momentum)
        meta[f"{name}.eps"] = repr(eps)
    st.save(OUT, out, meta)


if __name__ == "__main__":
    main()
