#!/usr/bin/env python3
"""ops_torch.py — the PyTorch (CPU) side of bench/ops.lua: times the same ops
at ViT-S/16 shapes and prints one line per op: `name<TAB>seconds` (median).
Run it through `build/sere bench/ops.lua`, which prints the side-by-side
table; alone: `python3 bench/ops_torch.py [threads] [repeats]`."""
import os
import sys

import torch

from timing import median_time, report

threads = int(sys.argv[1]) if len(sys.argv) > 1 else os.cpu_count()
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.set_num_threads(threads)
torch.manual_seed(0)

T = 128 * 197  # tokens of a ViT-S batch of 128 at 224 pixels
D, H = 384, 1536

x = torch.randn(T, D)
w1 = torch.randn(H, D)
h = torch.randn(T, H)
h2 = torch.randn(T, H)
bias = torch.randn(H)
col = torch.randn(T, 1)
scores = torch.randn(128 * 6, 197, 197) if os.environ.get("SERE_BENCH_BIG") else torch.randn(16 * 6, 197, 197)
q = torch.randn(16 * 6, 197, 64)
qkv = torch.randn(128, 197, 3, 6, 64)
idx = torch.randint(0, T, (T // 2,))
xg = torch.randn(T, D, requires_grad=True)
wg = torch.randn(H, D, requires_grad=True)


def linear_fwd_bwd():
    xg.grad = None
    wg.grad = None
    y = xg.matmul(wg.t())
    y.backward(h)


ops = {
    "matmul [25216,384]x[384,1536]": lambda: x.matmul(w1.t()),
    "matmul [25216,1536]x[1536,384]": lambda: h.matmul(w1),
    "bmm [96,197,64]x[96,64,197]": lambda: torch.bmm(q, q.transpose(1, 2)),
    "linear fwd+bwd [25216,384]->1536": linear_fwd_bwd,
    "add [25216,1536]+[1536]": lambda: h + bias,
    "mul [25216,1536]*[25216,1536]": lambda: h * h2,
    "mul [25216,1536]*[25216,1]": lambda: h * col,
    "exp [25216,1536]": lambda: h.exp(),
    "tanh [25216,1536]": lambda: h.tanh(),
    "sum(-1) [25216,1536]": lambda: h.sum(-1),
    "sum(1) [25216,1536]": lambda: h.sum(0),
    "mean [25216,1536]": lambda: h.mean(),
    "softmax(-1) [96,197,197]": lambda: scores.softmax(-1),
    "permute+contiguous qkv": lambda: qkv.permute(2, 0, 3, 1, 4).contiguous(),
    "cat dim1 2x[25216,384]": lambda: torch.cat([x, x], 1),
    "index_select [12608] rows": lambda: x.index_select(0, idx),
    "randn [25216,1536]": lambda: torch.randn(T, H),
}

only = os.environ.get("SERE_BENCH_ONLY")
for name, fn in ops.items():
    if not only or only in name:
        report(name, median_time(fn, repeats))
