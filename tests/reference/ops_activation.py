#!/usr/bin/python3
"""ops_activation.py — reference data for tests/lua/test_activation.lua:
F.gelu (exact erf form) and F.relu, forward and backward, computed in
float64 from float32 inputs and stored as float32 in
tests/data/ops/activation.safetensors.

    /usr/bin/python3 tests/reference/ops_activation.py     # Debian's python3-torch

gelu.x / gelu.g / gelu.y / gelu.gx and relu.*: a random case with its
upstream gradient. sweep.x: 512 points over [-13, 13]; sweep.y and sweep.d:
gelu(x) and gelu'(x) through erfc (1 + erf(z) loses every digit in float64
below z = -6, erfc does not), for an accuracy check in ulp."""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "ops", "activation.safetensors")


def grads(fn, x, g):
    xd = x.double().requires_grad_()
    y = fn(xd)
    y.backward(g.double())
    return y.float(), xd.grad.float()


def main():
    torch.manual_seed(0)
    out = {}
    x = (torch.randn(6, 7) * 3).float()
    g = torch.randn(6, 7).float()
    y, gx = grads(lambda t: F.gelu(t, approximate="none"), x, g)
    out.update({"gelu.x": x, "gelu.g": g, "gelu.y": y, "gelu.gx": gx})
    x = torch.randn(5, 9).float()
    x[0, 0] = 0.0  # relu'(0) is 0, as in torch
    x[2, 3] = -0.0
    g = torch.randn(5, 9).float()
    y, gx = grads(F.relu, x, g)
    out.update({"relu.x": x, "relu.g": g, "relu.y": y, "relu.gx": gx})
    s = torch.linspace(-13, 13, 512).float()
    sd = s.double()
    cdf = 0.5 * torch.special.erfc(-sd / math.sqrt(2))
    out["sweep.x"] = s
    out["sweep.y"] = (sd * cdf).float()
    out["sweep.d"] = (cdf + sd * torch.exp(-sd * sd / 2) / math.sqrt(2 * math.pi)).float()
    st.save(OUT, out)


if __name__ == "__main__":
    main()
