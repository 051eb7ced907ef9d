#!/usr/bin/python3
"""ops_attention.py — PyTorch reference for sere.attention (tests/lua/test_attention.lua).

    /usr/bin/python3 tests/reference/ops_attention.py   # Debian's python3-torch, CPU
    -> tests/data/ops/attention.safetensors

The reference is the naive composition softmax(q @ k^T * scale, -1) @ v with
autograd, evaluated in float64 from the float32 inputs and stored as float32,
so the Lua test measures sere's own f32 error. For each case <c>:
  <c>.out, <c>.dq, <c>.dk, <c>.dv    output and input gradients for the
                                     upstream gradient <c>.g
Small cases store their random inputs (<c>.q, <c>.k, <c>.v, <c>.g). The
ViT-sized cases (T = 197 and 37, d = 64) would be hundreds of KB, so their
inputs come from hashed() below, which the Lua test recomputes bit for bit,
and only every `stride`-th row of each result is stored (metadata
<c>.rows_stride). Metadata also holds each case's scale and, for the record,
PyTorch's own float32 error against the float64 result (<c>.torch_f32_err).
"""
import os

import torch

import st

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "data", "ops", "attention.safetensors"))


def hashed(n, seed):
    """n values in [-2, 2): Knuth's multiplicative hash of the flat index,
    exact in double and rounded once to float32 (sere.tensor does the same)."""
    vals = [((i * 2654435761 + seed * 40503) % 4294967296) / 4294967296 * 4 - 2 for i in range(n)]
    return torch.tensor(vals, dtype=torch.float32)


def reference(q, k, v, g, scale, dtype):
    q, k, v = (x.detach().to(dtype).requires_grad_(True) for x in (q, k, v))
    out = torch.softmax(q @ k.transpose(-2, -1) * scale, -1) @ v
    out.backward(g.to(dtype))
    return out.detach(), q.grad, k.grad, v.grad


def add_case(tensors, meta, name, q, k, v, g, scale, store_inputs, stride=1):
    exact = reference(q, k, v, g, scale, torch.float64)
    f32 = reference(q, k, v, g, scale, torch.float32)
    err = max(((a - b.double()).abs().max() / a.abs().max()).item() for a, b in zip(exact, f32))
    for key, val in zip(("out", "dq", "dk", "dv"), exact):
        tensors[f"{name}.{key}"] = val[..., ::stride, :].float().contiguous()
    if store_inputs:
        for key, val in (("q", q), ("k", k), ("v", v), ("g", g)):
            tensors[f"{name}.{key}"] = val
    meta[f"{name}.scale"] = repr(scale)
    meta[f"{name}.rows_stride"] = str(stride)
    meta[f"{name}.torch_f32_err"] = f"{err:.3g}"


def main():
    torch.manual_seed(0)
    tensors, meta = {}, {}
    # odd sizes: Tq != Tk, dv != d, two leading dims, a scale that is not 1/sqrt(d)
    q, k, v = torch.randn(2, 3, 5, 3), torch.randn(2, 3, 6, 3), torch.randn(2, 3, 6, 4)
    add_case(tensors, meta, "odd", q, k, v, torch.randn(2, 3, 5, 4), 0.7, True)
    # no leading dims, T = 5, d = 3, default scale
    q, k, v = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    add_case(tensors, meta, "t5d3", q, k, v, torch.randn(5, 3), 3 ** -0.5, True)
    # ViT-S shapes (d = 64): T = 197 (global crops), T = 37 (local crops), two heads
    for name, t, seed, stride in (("t197", 197, 1, 16), ("t37", 37, 11, 5)):
        shape = (1, 2, t, 64)
        n = 2 * t * 64
        q, k, v, g = (hashed(n, seed + i).view(shape) for i in range(4))
        add_case(tensors, meta, name, q, k, v, g, 64 ** -0.5, False, stride)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    st.save(OUT, tensors, meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    for key in sorted(k for k in meta if k.endswith("torch_f32_err")):
        print(f"  {key} = {meta[key]}")


if __name__ == "__main__":
    main()
