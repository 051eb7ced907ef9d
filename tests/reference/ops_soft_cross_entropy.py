#!/usr/bin/python3
"""ops_soft_cross_entropy.py — PyTorch reference for sere.soft_cross_entropy
(tests/lua/test_soft_cross_entropy.lua).

    /usr/bin/python3 tests/reference/ops_soft_cross_entropy.py   # Debian's python3-torch, CPU
    -> tests/data/ops/soft_cross_entropy.safetensors

The reference is the composition
    loss = -(softmax((t - c) / Tt, -1) * log_softmax(s / Ts, -1)).sum(-1)
with autograd (gradient wrt s for the upstream gradient <c>.g), evaluated in
float64 from the float32 inputs and stored as float32. For each case <c>:
<c>.loss and <c>.ds; small cases also store <c>.s, <c>.t, <c>.c, <c>.g. The
wide cases (K = 8192, and the "ramp" and "big" extremes) take their inputs
from hashed() / ramp() below, which the Lua test recomputes bit for bit, and
store every `cols_stride`-th column of ds. Metadata: temperatures, strides,
and PyTorch's own float32 error against float64 (<c>.torch_f32_err), to size
the Lua tolerances against.
"""
import os

import torch

import st

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "data", "ops", "soft_cross_entropy.safetensors"))


def hashed(n, seed, scale=1.0, offset=0.0):
    """n values offset + scale * [-2, 2): Knuth's multiplicative hash of the
    flat index, exact in double and rounded once to float32 (as sere.tensor)."""
    vals = [offset + scale * (((i * 2654435761 + seed * 40503) % 4294967296) / 4294967296 * 4 - 2) for i in range(n)]
    return torch.tensor(vals, dtype=torch.float32)


def reference(s, t, c, g, ts, tt, dtype):
    s = s.detach().to(dtype).requires_grad_(True)
    tc = t.to(dtype) - (c.to(dtype) if c is not None else 0)
    loss = -(torch.softmax(tc / tt, -1) * torch.log_softmax(s / ts, -1)).sum(-1)
    loss.backward(g.to(dtype))
    return loss.detach(), s.grad


def add_case(tensors, meta, name, s, t, c, g, ts, tt, store_inputs, stride=1):
    exact = reference(s, t, c, g, ts, tt, torch.float64)
    f32 = reference(s, t, c, g, ts, tt, torch.float32)
    err = max(((a - b.double()).abs().max() / a.abs().max().clamp(min=1e-30)).item() for a, b in zip(exact, f32))
    tensors[f"{name}.loss"] = exact[0].float()
    tensors[f"{name}.ds"] = exact[1][..., ::stride].float().contiguous()
    if store_inputs:
        tensors[f"{name}.s"], tensors[f"{name}.t"], tensors[f"{name}.g"] = s, t, g
        if c is not None:
            tensors[f"{name}.c"] = c
    meta[f"{name}.student_temp"] = repr(ts)
    meta[f"{name}.teacher_temp"] = repr(tt)
    meta[f"{name}.cols_stride"] = str(stride)
    meta[f"{name}.torch_f32_err"] = f"{err:.3g}"


def main():
    torch.manual_seed(0)
    tensors, meta = {}, {}
    # the iBOT temperatures on a small batch, centre [K]
    add_case(tensors, meta, "k7", torch.randn(4, 7), torch.randn(4, 7), torch.randn(7), torch.randn(4),
             0.1, 0.04, True)
    # K = 1: the loss is 0 and so is its gradient
    add_case(tensors, meta, "k1", torch.randn(3, 1), torch.randn(3, 1), None, torch.randn(3), 1.0, 1.0, True)
    # SERE pixel loss shape ([B, h, 13*13, 13*13] rows), temperatures 1 / 0.5,
    # centre as [1, K], leading dims [2, 3]
    add_case(tensors, meta, "k169", torch.randn(2, 3, 169), torch.randn(2, 3, 169), torch.randn(1, 169),
             torch.randn(2, 3), 1.0, 0.5, True)
    # iBOT's 8192 prototypes: 32 chunks of the one-pass loop
    k = 8192
    add_case(tensors, meta, "k8192", hashed(3 * k, 1).view(3, k), hashed(3 * k, 2).view(3, k),
             hashed(k, 3, 0.5), hashed(3, 4), 0.1, 0.04, False, 64)
    # logits rising along K (300: two chunks): every chunk raises both running maxima
    ramp = torch.tensor([i / 7 for i in range(2 * 300)], dtype=torch.float32).view(2, 300)
    add_case(tensors, meta, "ramp", ramp, ramp.flip(0) * 0.5, None, hashed(2, 5), 0.1, 0.04, False, 5)
    # large logits: |s / Ts| ~ 1e4 around a common offset, teacher / 0.04 ~ 2500
    add_case(tensors, meta, "big", hashed(4 * 300, 6, 4.0, 1000.0).view(4, 300), hashed(4 * 300, 7, 50.0).view(4, 300),
             None, hashed(4, 8), 0.1, 0.04, False, 5)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    st.save(OUT, tensors, meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    for key in sorted(k for k in meta if k.endswith("torch_f32_err")):
        print(f"  {key} = {meta[key]}")


if __name__ == "__main__":
    main()
