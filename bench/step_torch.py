#!/usr/bin/env python3
"""step_torch.py — the PyTorch side of bench/step.lua: one full iBOT + SERE
training step (teacher forward on the global crops, student forward on the
masked global crops and the local crops, iBOT + SERE losses, backward,
per-tensor clipping, AdamW with the two parameter groups, teacher EMA) with
the networks of tests/reference/sere_ref.py, our PyTorch twin of the method.

The loss is computed as sere's lua/sere/objective.lua computes it, with the
same two shortcuts as sere_ref.training_loss(pixel_path="features",
mim_path="shortcut"): pixel relations formed from features sampled at the
grid points, and the prototype layer applied to masked patch tokens only.
training_loss itself also forms the full patch logits and N x N relations
it then does not use (it is a test reference), so it would time work that
neither side needs; the pieces it is built from are reused here.

Reads the batch, the student's initial weights and every setting from the
safetensors file step.lua writes. For each mode prints `<mode> <key>\\t<value>`
lines: fwd, bwd, opt, step (median seconds), peak (bytes, during the timed
steps: the largest memory allocated by tensors on CUDA, the process's peak
resident memory on CPU) and loss (the first step's total). Modes: [compile_]fp32 | tf32 |
amp_fp16 | amp_bf16; "compile" is compile_amp_bf16. amp_fp16 uses a gradient
scaler, as the reference implementation does; compile_* wraps each
network's backbone and head MLP in torch.compile (skipped with a message
where torch.compile does not exist, e.g. torch 1.13).

    python3 bench/step_torch.py DATA_FILE cpu|cuda STEPS WARMUP MODE[,MODE...]
"""
import functools
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import sere_ref  # noqa: E402
from export_ref import load  # noqa: E402

# The local crops' positional table through F.interpolate, which runs on the
# tensors' device (sere_ref's explicit bicubic matrices are built on the CPU;
# make_model_data.py checks that the two agree).
sere_ref.interpolate_pos_embed = functools.partial(sere_ref.interpolate_pos_embed, use_torch=True)


def network(c, student):
    """sere_ref's ViT + iBOT head as recipes/vit_small.lua's R.networks builds them."""
    vit = sere_ref.VisionTransformer(
        img_size=c["global_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
        num_heads=c["heads"], drop_path_rate=c["drop_path"] if student else 0.0, masked_im_modeling=student,
        sigma_global=float(c["sigma_global"]), sigma_local=float(c["sigma_local"]))
    head = sere_ref.IBOTHead(
        c["embed_dim"], c["out_dim"], hidden_dim=c["head_hidden_dim"], bottleneck_dim=c["bottleneck_dim"],
        norm_last_layer=c["norm_last_layer"] or not student,
        shared_head=c["shared_head"] if student else c["shared_head_teacher"], patch_out_dim=c["patch_out_dim"])
    return sere_ref.SereModel(vit, head)


def cls_loss(t_cls, s_cls, center, n_global, teacher_temp, student_temp):
    """iBOT [CLS] loss (method 7.2): every (teacher global g, student crop v != g) pair."""
    b = t_cls.shape[0] // n_global
    t = torch.softmax((t_cls - center) / teacher_temp, dim=-1).chunk(n_global)
    s = (s_cls / student_temp).chunk(s_cls.shape[0] // b)
    terms = [sere_ref.soft_ce(t[g], s[v]).mean() for g in range(n_global) for v in range(len(s)) if v != g]
    return sum(terms) / len(terms)


def mim_loss(s_bneck, t_bneck, s_last, t_last, masks, center2, teacher_patch_temp, student_temp):
    """iBOT MIM loss (7.3) with the prototype layer at masked tokens only
    (sere_ref.ibot_mim_shortcut, kept on the tensors' device): per crop
    image the mean over its masked tokens, then the mean over crop images
    (all crop groups have the same size). Also returns the teacher's mean
    patch logits for the patch centre (7.4)."""
    rows = t_bneck.shape[0]
    m = masks.reshape(rows, -1)
    s = (s_bneck[m] @ s_last.t()) / student_temp
    t = torch.softmax(((t_bneck[m] @ t_last.t()) - center2.reshape(1, -1)) / teacher_patch_temp, dim=-1)
    ce = sere_ref.soft_ce(t, s)
    row = m.nonzero()[:, 0]
    per_row = torch.zeros(rows, dtype=ce.dtype, device=ce.device).index_add(0, row, ce)
    mim = (per_row / m.sum(-1).to(ce.dtype).clamp(min=1.0)).mean()
    patch_mean = t_bneck.reshape(-1, t_bneck.shape[-1]).mean(0, keepdim=True) @ t_last.t()
    return mim, patch_mean.reshape(1, 1, -1)


def as_map(pre, hp, wp):
    """[B, N, D] patch tokens -> [B, D, hp, wp]."""
    return pre.transpose(1, 2).reshape(pre.shape[0], pre.shape[2], hp, wp)


def objective(student, teacher, batch, center, center2, c):
    """The total loss of one iteration, as lua/sere/objective.lua computes
    it; updates the centres in place."""
    G, L, h = c["n_global"], c["n_local"], c["heads"]
    ts = c["student_temp"]
    with torch.no_grad():
        t_tokens, t_pre, hp, wp = teacher.backbone.forward_features(batch["global_crops"])
        t_bneck = teacher.head.bottleneck(t_tokens)
        t_cls = teacher.head.last_layer(t_bneck[:, 0])
        t_channel = teacher.backbone.channel_sere.projection(as_map(t_pre, hp, wp))
        t_pixel = teacher.backbone.pixel_sere.projection(as_map(t_pre, hp, wp))
    s_tokens, s_pre, _, _ = student.backbone.forward_features(batch["global_crops"], batch["masks"])
    s_bneck = student.head.bottleneck(s_tokens)
    _, s_channel = student.backbone.channel_sere.features(s_pre, hp, wp)
    _, s_pixel = student.backbone.pixel_sere.features(s_pre, hp, wp)
    l_tokens, l_pre, lh, lw = student.backbone.forward_features(batch["local_crops"])
    _, l_channel = student.backbone.channel_sere_local.features(l_pre, lh, lw)
    _, l_pixel = student.backbone.pixel_sere_local.features(l_pre, lh, lw)
    s_cls = student.head.last_layer(torch.cat([s_bneck[:, 0], student.head.bottleneck(l_tokens[:, 0])], 0))

    cls = cls_loss(t_cls, s_cls, center, G, c["teacher_temp"], ts)
    mim, t_patch_mean = mim_loss(s_bneck[:, 1:], t_bneck[:, 1:], student.head.last_layer2.weight(),
                                 teacher.head.last_layer2.weight().detach(), batch["masks"], center2,
                                 c["teacher_patch_temp"], ts)
    rows, cols = batch["grids_gg_rows"], batch["grids_gg_cols"]
    t_gg = sere_ref.aligned_relation_from_features(t_pixel, rows, cols, h)
    s_gg = sere_ref.aligned_relation_from_features(s_pixel, rows, cols, h)
    pixel = sere_ref.sere_pixel_terms(t_gg, s_gg, None, None, batch["grids_lg_local"], batch["grids_lg_global"], G, L,
                                      (hp, wp), (lh, lw), c["pixel_temp"], teacher_maps=t_pixel,
                                      student_local_maps=l_pixel, num_heads=h)
    sg, sl = float(c["sigma_global"]), float(c["sigma_local"])
    channel = sere_ref.sere_channel_terms(sere_ref.channel_relation(t_channel, sg),
                                          sere_ref.channel_relation(s_channel, sg),
                                          sere_ref.channel_relation(l_channel, sl), G, L, c["channel_temp"])
    ibot = cls * c["lambda1"] + mim * c["lambda2"]
    total = sere_ref.total_loss(ibot, sum(pixel) / len(pixel), sum(channel) / len(channel), c["alpha"], c["beta"])
    with torch.no_grad():
        m = c["center_momentum"]
        center.mul_(m).add_(t_cls.float().mean(0, keepdim=True), alpha=1 - m)
        center2.mul_(m).add_(t_patch_mean.float(), alpha=1 - m)
    return total


def param_groups(model):
    """sere.optim.param_groups: biases and tensors of 2+ dims decay; the
    other 1-D tensors (LayerNorm and BatchNorm gains) do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if name.endswith(".bias") or p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_per_tensor(params, clip):
    """Method 8.5: each gradient scaled by clip / (||g|| + 1e-6) when that is
    below 1 (without a host synchronisation per tensor)."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_((clip / (p.grad.norm() + 1e-6)).clamp(max=1.0))


def reset_peak(device):
    """Restarts the peak memory count: CUDA's allocator statistics, or on the
    CPU the process's peak resident memory (Linux: /proc/self/clear_refs)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s*(\d+)", f.read()).group(1)) * 1024


def run_mode(mode, tensors, c, device, steps, warmup):
    compiled = mode.startswith("compile_")
    precision = mode[len("compile_"):] if compiled else mode
    if precision not in ("fp32", "tf32", "amp_fp16", "amp_bf16"):
        sys.exit(f"step_torch: unknown mode '{mode}': expected [compile_]fp32|tf32|amp_fp16|amp_bf16 or compile")
    if compiled and not hasattr(torch, "compile"):
        print(f"step_torch: skipping {mode}: torch {torch.__version__} has no torch.compile", file=sys.stderr)
        return
    if precision == "amp_fp16" and device == "cpu":
        print(f"step_torch: skipping {mode}: fp16 autocast needs CUDA", file=sys.stderr)
        return
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.manual_seed(0)
    student, teacher = network(c, True), network(c, False)
    weights = {k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")}
    student.load_state_dict(weights)
    teacher.load_state_dict(weights, strict=False)  # the student's mask embedding stays behind
    student.to(device).train()
    teacher.to(device).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if compiled:
        for net in (student, teacher):
            net.backbone.forward_features = torch.compile(net.backbone.forward_features)
            net.head.bottleneck = torch.compile(net.head.bottleneck)
    batch = {k: v.to(device) for k, v in tensors.items() if not k.startswith("student.")}
    center = torch.zeros(1, c["out_dim"], device=device)
    k_patch = c["out_dim"] if c["shared_head"] or c["shared_head_teacher"] else c["patch_out_dim"]
    center2 = torch.zeros(1, 1, k_patch, device=device)
    opt = torch.optim.AdamW(param_groups(student), lr=c["lr"], weight_decay=c["weight_decay"], betas=(0.9, 0.999),
                            eps=1e-8)
    params = [p for g in opt.param_groups for p in g["params"]]
    student_named = dict(student.named_parameters())
    ema_teacher = [p for n, p in teacher.named_parameters() if n in student_named]
    ema_student = [student_named[n] for n, p in teacher.named_parameters() if n in student_named]
    amp_dtype = {"amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}.get(precision)
    scaler = torch.cuda.amp.GradScaler() if precision == "amp_fp16" else None

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = {"fwd": [], "bwd": [], "opt": [], "step": []}
    first_loss = None
    for i in range(warmup + steps):
        if i == warmup:
            reset_peak(device)
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
            total = objective(student, teacher, batch, center, center2, c)
        sync()
        t1 = time.perf_counter()
        (scaler.scale(total) if scaler else total).backward()
        sync()
        t2 = time.perf_counter()
        if scaler:
            scaler.unscale_(opt)
        clip_per_tensor(params, c["clip_grad"])
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_mul_(ema_teacher, c["momentum"])
            torch._foreach_add_(ema_teacher, ema_student, alpha=1 - c["momentum"])
        sync()
        t3 = time.perf_counter()
        if first_loss is None:
            first_loss = total.item()
        if i >= warmup:
            for k, v in zip(("fwd", "bwd", "opt", "step"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                times[k].append(v)
    peak = peak_memory(device)
    for k, v in times.items():
        v.sort()
        print(f"{mode} {k}\t{v[(len(v) - 1) // 2]:.6f}", flush=True)
    print(f"{mode} peak\t{peak}")
    print(f"{mode} loss\t{first_loss:.6f}", flush=True)


def main():
    path, device, steps, warmup, modes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    tensors, meta = load(path)
    c = {k: (v == "true" if v in ("true", "false") else int(v) if v.lstrip("-").isdigit() else float(v))
         for k, v in meta.items()}
    for mode in modes.split(","):
        run_mode("compile_amp_bf16" if mode == "compile" else mode, tensors, c, device, steps, warmup)
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
