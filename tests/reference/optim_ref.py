"""optim_ref.py — reference data for tests/lua/test_optim.lua: five steps of
torch.optim.AdamW (two parameter groups, method.md 8.2) on small float32
tensors with given gradients, with the reference's per-tensor clipping
(8.5), a `last_layer` tensor whose gradient is dropped for the first two
steps (3.5), lr / weight decay changing every step, and a teacher EMA after
every step (8.8). Writes tests/data/optim/optim_ref.safetensors:

  input.param.<n>, input.teacher.<n>     parameters and teacher copies before step 0
  step<k>.grad.<n>                       the gradient given at step k (before clipping)
  step<k>.clipped.<n>                    after clipping and dropping
  step<k>.param.<n>, step<k>.teacher.<n> after the AdamW step / the EMA
  step<k>.exp_avg.<n>, step<k>.exp_avg_sq.<n>, step<k>.step.<n>   AdamW state
metadata: step<k>.lr / .wd / .momentum (repr of the Python floats), clip.

Run: /usr/bin/python3 tests/reference/optim_ref.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import save  # noqa: E402

STEPS, CLIP, FROZEN_STEPS = 5, 0.3, 2
SHAPES = [  # names as in the model; which group each lands in follows 8.2
    ("backbone.cls_token", (1, 1, 4)),
    ("backbone.blocks.0.norm1.weight", (4,)),
    ("backbone.blocks.0.attn.qkv.weight", (6, 4)),
    ("backbone.blocks.0.attn.qkv.bias", (6,)),
    ("head.last_layer.weight_v", (3, 4)),
]
LR = [0.0, 1e-3, 2.5e-3, 2e-3, 1.2e-3]
WD = [0.04, 0.05, 0.1, 0.2, 0.4]
MOMENTUM = [0.996, 0.9965, 0.997, 0.998, 0.999]
GRAD_SCALE = {"backbone.cls_token": 0.05, "backbone.blocks.0.attn.qkv.bias": 0.02}  # these stay unclipped


def main():
    g = torch.Generator().manual_seed(5)
    params = {n: torch.randn(s, generator=g).requires_grad_() for n, s in SHAPES}
    teacher = {n: p.detach().clone() for n, p in params.items()}
    decayed = [n for n, _ in SHAPES if n.endswith(".bias") or params[n].dim() >= 2]
    plain = [n for n, _ in SHAPES if n not in decayed]
    opt = torch.optim.AdamW([{"params": [params[n] for n in decayed]},
                             {"params": [params[n] for n in plain], "weight_decay": 0.0}],
                            lr=0.0, betas=(0.9, 0.999), eps=1e-8)
    out = {f"input.param.{n}": p.detach().clone() for n, p in params.items()}
    out.update({f"input.teacher.{n}": t.clone() for n, t in teacher.items()})
    meta = {"clip": repr(CLIP), "steps": str(STEPS), "frozen_steps": str(FROZEN_STEPS)}
    for k in range(STEPS):
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = LR[k]
        opt.param_groups[0]["weight_decay"] = WD[k]
        meta.update({f"step{k}.lr": repr(LR[k]), f"step{k}.wd": repr(WD[k]), f"step{k}.momentum": repr(MOMENTUM[k])})
        for n, p in params.items():
            p.grad = torch.randn(p.shape, generator=g) * GRAD_SCALE.get(n, 1.0)
            out[f"step{k}.grad.{n}"] = p.grad.clone()
        for n, p in params.items():  # the reference's clip_gradients
            param_norm = p.grad.data.norm(2)
            clip_coef = CLIP / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
        if k < FROZEN_STEPS:  # cancel_gradients_last_layer
            for n, p in params.items():
                if "last_layer" in n:
                    p.grad = None
        for n, p in params.items():
            if p.grad is not None:
                out[f"step{k}.clipped.{n}"] = p.grad.clone()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            m = MOMENTUM[k]
            for n, t in teacher.items():
                t.mul_(m).add_((1 - m) * params[n].detach())
        for n, p in params.items():
            out[f"step{k}.param.{n}"] = p.detach().clone()
            out[f"step{k}.teacher.{n}"] = teacher[n].clone()
            st = opt.state.get(p)
            if st:
                out[f"step{k}.exp_avg.{n}"] = st["exp_avg"].clone()
                out[f"step{k}.exp_avg_sq.{n}"] = st["exp_avg_sq"].clone()
                out[f"step{k}.step.{n}"] = torch.tensor(int(st["step"]), dtype=torch.int64)
    path = os.path.join(os.path.dirname(__file__), "..", "data", "optim", "optim_ref.safetensors")
    save(os.path.normpath(path), out, meta)
    print("wrote", os.path.normpath(path), len(out), "tensors")


if __name__ == "__main__":
    main()
