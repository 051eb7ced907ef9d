#!/usr/bin/python3
"""ops_normalize.py — reference data for tests/lua/test_normalize.lua:
F.normalize(x, p=2, dim, eps) forward and backward, computed in float64 from
float32 inputs and stored as float32 in tests/data/ops/normalize.safetensors.

    /usr/bin/python3 tests/reference/ops_normalize.py     # Debian's python3-torch

Per case `c`: c.x, c.g (upstream gradient), c.y, c.gx; metadata c.dim
(1-based, as the Lua call takes it) and c.eps. Case "clamped" has rows with
norms below eps (the denominator is eps, a constant) beside rows above."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "ops", "normalize.safetensors")


def main():
    torch.manual_seed(0)
    out, meta = {}, {}
    clamped = torch.randn(4, 5)
    clamped[1] *= 0.05  # norm ~0.1 < eps = 0.5
    clamped[3] *= 0.02
    cases = {
        "last": (torch.randn(4, 9), -1, 1e-12),
        "middle": (torch.randn(3, 5, 6), 2, 1e-12),
        "first": (torch.randn(7, 3), 1, 1e-12),
        "clamped": (clamped, 2, 0.5),
    }
    for name, (x, dim, eps) in cases.items():
        x = x.float()
        g = torch.randn(x.shape).float()
        xd = x.double().requires_grad_()
        y = F.normalize(xd, p=2.0, dim=dim - 1 if dim > 0 else dim, eps=eps)
        y.backward(g.double())
        out.update({f"{name}.x": x, f"{name}.g": g, f"{name}.y": y.float(), f"{name}.gx": xd.grad.float()})
        meta[f"{name}.dim"] = str(dim)
        meta[f"{name}.eps"] = repr(eps)
    st.save(OUT, out, meta)


if __name__ == "__main__":
    main()
