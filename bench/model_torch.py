#!/usr/bin/env python3
"""model_torch.py — the PyTorch (CPU) side of bench/model.lua: forward and
forward+backward of the ViT-S/16 backbone (tests/reference/sere_ref.py, our
PyTorch twin of the method) at batch B for 224 and 96 pixel crops. Prints
`name<TAB>seconds` (median) per case. Run through `build/sere bench/model.lua`,
or alone: `python3 bench/model_torch.py [threads] [repeats] [batch]`."""
import os
import sys

import torch

from timing import median_time, report

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import sere_ref  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else os.cpu_count()
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
torch.set_num_threads(threads)
torch.manual_seed(0)

vit = sere_ref.VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
vit.train()


def case(size, backward):
    x = torch.randn(batch, 3, size, size)
    up = None

    def run():
        nonlocal up
        tokens, _, _, _ = vit.forward_features(x)
        if backward:
            if up is None:
                up = torch.randn_like(tokens)
            vit.zero_grad(set_to_none=True)
            tokens.backward(up)
        return tokens

    return run


for size in (224, 96):
    for backward in (False, True):
        name = f"vit_small {'fwd+bwd' if backward else 'fwd'} {batch}x3x{size}x{size}"
        fn = case(size, backward)
        with torch.set_grad_enabled(backward):
            report(name, median_time(fn, repeats))
