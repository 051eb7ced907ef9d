#!/usr/bin/python3
"""make_model_data.py — writes the model / loss reference data that sere's
Lua tests match, into tests/data/model/, using sere_ref.py (our own PyTorch
reference, written from docs/method.md). Runs on CPU with Debian's
python3-torch alone:

    /usr/bin/python3 tests/reference/make_model_data.py            # write all files
    /usr/bin/python3 tests/reference/make_model_data.py --check    # only the verifications

Everything is computed in float64 from inputs and parameters that are
already rounded to float32, then stored as float32 (bool masks as BOOL,
BatchNorm step counters as I64). Seeds are fixed, so the files are
reproducible. See tests/reference/README.md for the layout of every file.
It also verifies (and prints the max errors of):
  * the explicit bicubic / bilinear formulas of method.md against
    F.interpolate / F.grid_sample,
  * shortcut 1: relation alignment by sampling features first,
  * shortcut 2: the patch head only at masked tokens plus the mean
    bottleneck for the patch centre.
"""
import argparse
import copy
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sere_ref as R  # noqa: E402
import st  # noqa: E402

OUT = os.path.normpath(os.path.join(HERE, "..", "data", "model"))
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

REPORT = {}


# --------------------------------------------------------------------------
# helpers

def r32(t):
    """Round a float64 tensor to the nearest float32 value (kept as f64)."""
    return t.float().double() if t.is_floating_point() else t


def gen(seed):
    torch.manual_seed(seed)  # for the module constructors' own draws
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, std=1.0, mean=0.0):
    return r32(torch.randn(*shape, generator=g) * std + mean)


def rand(g, *shape, lo=0.0, hi=1.0):
    return r32(lo + (hi - lo) * torch.rand(*shape, generator=g))


def round_module_(m):
    with torch.no_grad():
        for v in m.state_dict().values():
            if v.is_floating_point():
                v.copy_(r32(v))


def test_init_(m, g, head_g_trainable=None):
    """Test initialisation (NOT the method's, see README): values of order 1
    everywhere so that every term matters at float32 tolerance. Linear
    weights N(0, 1/fan_in), biases N(0, 0.1^2); LayerNorm gain 1 + 0.1 N,
    shift 0.1 N; BatchNorm gain U(1.5, 3), shift 0.2 N, running mean
    0.1 N, running var U(0.5, 1.5), counter 3; class token, positional
    table, mask embedding N(0, 0.5^2); the patch-embedding conv, the 1x1
    predictor conv and the prototype layer's v keep their default uniform
    initialisation; weight-norm g is 1 when frozen, else U(0.5, 1.5)."""
    import torch.nn as nn
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.in_features))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, nn.BatchNorm2d):
                C = mod.num_features
                mod.weight.copy_(1.5 + 1.5 * torch.rand(C, generator=g))
                mod.bias.copy_(0.2 * torch.randn(C, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(C, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(C, generator=g))
                mod.num_batches_tracked.fill_(3)
            elif isinstance(mod, R.WeightNormLinear):
                if mod.weight_g.requires_grad:
                    mod.weight_g.copy_(0.5 + torch.rand(mod.weight_g.shape, generator=g))
                else:
                    mod.weight_g.fill_(1.0)
            elif isinstance(mod, R.VisionTransformer):
                mod.cls_token.copy_(0.5 * torch.randn(mod.cls_token.shape, generator=g))
                mod.pos_embed.copy_(0.5 * torch.randn(mod.pos_embed.shape, generator=g))
                if mod.masked_embed is not None:
                    mod.masked_embed.copy_(0.5 * torch.randn(mod.masked_embed.shape, generator=g))
    round_module_(m)


def store(t):
    t = t.detach()
    return t.float() if t.is_floating_point() else t


def save(fname, tensors, config, description):
    os.makedirs(OUT, exist_ok=True)
    meta = {"description": description, "config": json.dumps(config, sort_keys=True),
            "generator": "tests/reference/make_model_data.py", "compute_dtype": "float64", "stored_dtype": "float32"}
    for k, v in config.items():
        meta["cfg." + k] = json.dumps(v)
    path = os.path.join(OUT, fname)
    st.save(path, {k: store(v) for k, v in tensors.items()}, meta)
    print(f"  wrote {os.path.relpath(path)}  ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")


def backward(objective_terms, wrt):
    """Gradients of sum(objective_terms) wrt the dict `wrt` (name -> tensor);
    entries whose gradient does not exist are left out."""
    names = list(wrt)
    obj = sum(objective_terms)
    gs = torch.autograd.grad(obj, [wrt[n] for n in names], allow_unused=True)
    return {n: g for n, g in zip(names, gs) if g is not None}


def upstream_for(g, outs):
    return {k: randn(g, *v.shape) for k, v in outs.items()}


def contract(outs, ups):
    return [(outs[k] * ups[k]).sum() for k in ups]


def module_case(module, inputs, outs, ups, prefix=""):
    """Standard per-module record: input.*, param.* (state_dict before the
    forward is the caller's job), output.*, upstream.*, grad.input.*,
    grad.param.*."""
    wrt = {"input." + k: v for k, v in inputs.items() if v.is_floating_point() and v.requires_grad}
    wrt.update({"param." + n: p for n, p in module.named_parameters() if p.requires_grad})
    grads = backward(contract(outs, ups), wrt)
    rec = {}
    rec.update({"input." + k: v for k, v in inputs.items()})
    rec.update({"output." + k: v for k, v in outs.items()})
    rec.update({"upstream." + k: v for k, v in ups.items()})
    rec.update({"grad." + k: v for k, v in grads.items()})
    return {prefix + k: v for k, v in rec.items()}


def params_of(module, prefix="param."):
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}


def buffers_after(module, prefix="after."):
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def maxerr(a, b):
    return (a.detach() - b.detach()).abs().max().item()


def report(name, err, tol):
    REPORT[name] = err
    flag = "ok" if err <= tol else "FAIL"
    print(f"  [{flag}] {name}: max abs error {err:.3e} (tolerance {tol:g})")
    if err > tol:
        raise SystemExit(f"verification failed: {name}")


# --------------------------------------------------------------------------
# per-module files

def make_linear():
    g = gen(101)
    m = torch.nn.Linear(5, 4)
    test_init_(m, g)
    x = randn(g, 2, 3, 5).requires_grad_()
    outs = {"y": m(x)}
    rec = params_of(m)
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    save("linear.safetensors", rec, {"in": 5, "out": 4, "bias": True}, "nn.Linear: y = x W^T + b")


def make_layernorm():
    g = gen(102)
    m = torch.nn.LayerNorm(8, eps=R.LN_EPS)
    test_init_(m, g)
    x = randn(g, 2, 3, 8, std=2.0, mean=0.5).requires_grad_()
    outs = {"y": m(x)}
    rec = params_of(m)
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    save("layernorm.safetensors", rec, {"dim": 8, "eps": R.LN_EPS}, "LayerNorm over the last dim, eps 1e-6")


def make_mlp():
    g = gen(103)
    m = R.Mlp(8, 32)
    test_init_(m, g)
    x = randn(g, 2, 3, 8).requires_grad_()
    outs = {"y": m(x)}
    rec = params_of(m)
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    save("mlp.safetensors", rec, {"dim": 8, "hidden": 32, "act": "gelu_exact"}, "Mlp: fc1, exact GELU, fc2")


def make_attention():
    g = gen(104)
    m = R.Attention(8, 2)
    test_init_(m, g)
    x = randn(g, 2, 5, 8).requires_grad_()
    outs = {"y": m(x)}
    rec = params_of(m)
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    save("attention.safetensors", rec, {"dim": 8, "num_heads": 2, "head_dim": 4, "qkv_bias": True},
         "Attention: qkv [Q|K|V], per-head softmax(QK^T d^-1/2)V, proj")


def make_block():
    g = gen(105)
    m = R.Block(8, 2, 4.0, drop_path=0.0)
    test_init_(m, g)
    x = randn(g, 2, 5, 8).requires_grad_()
    outs = {"y": m(x)}
    rec = params_of(m)
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    save("block.safetensors", rec, {"dim": 8, "num_heads": 2, "mlp_ratio": 4, "drop_path": 0.0, "ln_eps": R.LN_EPS},
         "pre-norm transformer block, drop path 0")


def make_patch_embed():
    g = gen(106)
    m = R.PatchEmbed(4, 3, 6)
    round_module_(m)
    x = randn(g, 2, 3, 10, 13).requires_grad_()  # floor(10/4)=2 x floor(13/4)=3
    outs = {"y": m(x)}
    rec = params_of(m)
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    save("patch_embed.safetensors", rec, {"patch_size": 4, "in_chans": 3, "embed_dim": 6, "input_hw": [10, 13]},
         "PatchEmbed: conv kernel = stride = p, no padding, bias; output [B, D, floor(H/p), floor(W/p)]")


def make_pos_interp():
    print("pos_embed interpolation (explicit bicubic vs F.interpolate):")
    g = gen(107)
    cases = [("m14_to_6x6", 14, 6, 6), ("m4_to_2x2", 4, 2, 2), ("m4_to_3x5", 4, 3, 5), ("m14_to_7x9", 14, 7, 9)]
    rec, cfg = {}, {"D": 4, "A": -0.75, "cases": {}}
    worst = 0.0
    for name, M, Hp, Wp in cases:
        pe = randn(g, 1, 1 + M * M, 4).requires_grad_()
        out = R.interpolate_pos_embed(pe, Hp, Wp)
        worst = max(worst, maxerr(out, R.interpolate_pos_embed(pe, Hp, Wp, use_torch=True)))
        up = randn(g, *out.shape)
        (gpe,) = torch.autograd.grad((out * up).sum(), [pe])
        rec.update({f"{name}.input.pos_embed": pe, f"{name}.output.pos_embed": out, f"{name}.upstream.pos_embed": up,
                    f"{name}.grad.input.pos_embed": gpe})
        cfg["cases"][name] = {"M": M, "Hp": Hp, "Wp": Wp, "scale_y": (Hp + 0.1) / M, "scale_x": (Wp + 0.1) / M}
    report("bicubic explicit vs F.interpolate", worst, 1e-12)
    save("pos_interp.safetensors", rec, cfg,
         "positional-table interpolation: class entry kept, M x M grid resampled bicubic (A=-0.75) with scale factors (Hp+0.1)/M, (Wp+0.1)/M")


VIT_CFG = {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0,
           "sigma_global": 14.0, "sigma_local": 6.0, "ln_eps": R.LN_EPS, "bn_eps": R.BN_EPS,
           "bn_momentum": R.BN_MOMENTUM}


def make_vit():
    g = gen(108)
    c = VIT_CFG
    m = R.VisionTransformer(c["img_size"], c["patch_size"], c["embed_dim"], c["depth"], c["num_heads"], c["mlp_ratio"],
                            0.0, True, c["sigma_global"], c["sigma_local"])
    test_init_(m, g)
    m.train()
    base_state = copy.deepcopy(m.state_dict())
    rec = params_of(m)
    cases = {}

    def run(prefix, x, mask, local, keep, rate):
        m.load_state_dict(base_state)
        for i, blk in enumerate(m.blocks):
            blk.drop_path = rate * i / (len(m.blocks) - 1)
        tokens, pre, Hp, Wp = m.forward_features(x, mask, keep)
        ch, px = m.sere_heads(local)
        cz, cp = ch(pre, Hp, Wp)
        sz, sp = px(pre, Hp, Wp)
        outs = {"tokens": tokens, "patch_pre": pre, "channel_z": cz, "channel_p": cp, "pixel_z": sz, "pixel_p": sp}
        ins = {"x": x}
        if mask is not None:
            ins["mask"] = mask
        if keep is not None:
            ins["keep"] = keep
        r = module_case(m, ins, outs, upstream_for(g, outs), prefix)
        r.update(buffers_after(m, prefix + "after."))
        rec.update(r)
        cases[prefix[:-1]] = {"input_hw": list(x.shape[-2:]), "masked": mask is not None, "local_heads": local,
                              "drop_path_rate": rate, "block_rates": [blk.drop_path for blk in m.blocks]}

    x = randn(g, 2, 3, 64, 64).requires_grad_()
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 0:3] = True  # image 0: 6 masked tokens, image 1 unmasked
    mask[0, 3, 3] = True
    run("masked.", x, mask, False, None, 0.0)
    xl = randn(g, 2, 3, 32, 32).requires_grad_()
    run("local.", xl, None, True, None, 0.0)
    xd = randn(g, 2, 3, 32, 32).requires_grad_()  # local-size crops (as the student sees them), local heads
    keep = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])  # [depth, 2 (attn, mlp), B]
    run("droppath.", xd, None, True, keep, 0.3)
    m.load_state_dict(base_state)
    save("vit.safetensors", rec, dict(c, cases=cases),
         "tiny ViT backbone forward (tokens after final LN, pre-LN last-block patch tokens, SERE relations); three cases")


def make_ibot_head(norm_last_layer):
    g = gen(109 if norm_last_layer else 110)
    cfg = {"in_dim": 8, "hidden_dim": 16, "bottleneck_dim": 8, "out_dim": 12, "norm_last_layer": norm_last_layer,
           "shared_head": True, "l2_eps": 1e-12}
    m = R.IBOTHead(8, 12, 16, 8, norm_last_layer=norm_last_layer, shared_head=True)
    test_init_(m, g)
    x = randn(g, 2, 5, 8).requires_grad_()
    cls, patch = m(x)
    outs = {"cls": cls, "patch": patch}
    rec = params_of(m)
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    x2 = randn(g, 3, 8)
    rec["input.x2d"] = x2
    rec["output.logits2d"] = m(x2)
    name = "ibot_head_norm.safetensors" if norm_last_layer else "ibot_head_nonorm.safetensors"
    save(name, rec, cfg, "iBOT head: 3-layer MLP (exact GELU), L2 normalise, weight-normalised shared last layer")


def make_sere_head(kind, local):
    g = gen(111 + 2 * (kind == "pixel") + local)
    D, B = 8, 3
    Hp = Wp = 2 if local else 4
    if kind == "channel":
        m = R.ChannelSERE(D, 6.0 if local else 14.0)
        cfg = {"dim": D, "sigma": m.sigma}
    else:
        m = R.PixelSERE(D, 2)
        cfg = {"dim": D, "num_heads": 2, "head_dim": 4}
    cfg.update({"Hp": Hp, "Wp": Wp, "bn_eps": R.BN_EPS, "bn_momentum": R.BN_MOMENTUM, "bn_mode": "train"})
    test_init_(m, g)
    m.train()
    rec = params_of(m)
    x = randn(g, B, Hp * Wp, D, std=1.5, mean=0.3).requires_grad_()
    a, b = m(x, Hp, Wp)
    outs = {"z": a, "p": b}
    rec.update(module_case(m, {"x": x}, outs, upstream_for(g, outs)))
    rec.update(buffers_after(m))
    name = f"{kind}_sere{'_local' if local else ''}.safetensors"
    save(name, rec, cfg, f"{kind} SERE head in training-mode BN: relations of the projection (z) and predictor (p) branches")


GRID_PAIRS = [  # (name, mapping a, mapping b) as (x, y, w, h, flip)
    ("overlap", (10, 20, 200, 150, 0), (100, 60, 180, 200, 0)),
    ("overlap_a_flipped", (10, 20, 200, 150, 1), (100, 60, 180, 200, 0)),
    ("both_flipped", (50, 30, 120, 90, 1), (0, 0, 100, 100, 1)),
    ("nested", (0, 0, 400, 300, 0), (120, 80, 96, 64, 1)),
    ("nested_flipped_inner_outer", (200, 150, 50, 70, 1), (100, 100, 300, 250, 1)),
    ("identical", (30, 40, 160, 160, 0), (30, 40, 160, 160, 0)),
    ("no_overlap", (0, 0, 100, 100, 0), (150, 0, 50, 50, 1)),
    ("touching_edge", (0, 0, 100, 100, 0), (100, 0, 80, 80, 0)),
]


def make_overlap_grid():
    ma = torch.tensor([p[1] for p in GRID_PAIRS], dtype=torch.float64)
    mb = torch.tensor([p[2] for p in GRID_PAIRS], dtype=torch.float64)
    rec = {"input.mapping_a": ma, "input.mapping_b": mb}
    for S in (13, 6):
        ga, gb = zip(*[R.overlap_grids(a, b, S) for _, a, b in GRID_PAIRS])
        rec[f"output.grid_a_{S}"] = torch.stack(ga)
        rec[f"output.grid_b_{S}"] = torch.stack(gb)
    save("overlap_grid.safetensors", rec, {"pairs": [p[0] for p in GRID_PAIRS], "S": [13, 6], "no_overlap_fill": -2.0},
         "overlap sampling grids (method 5.6) for several mapping pairs; grid[i, j] = (x, y)")


def make_align():
    print("relation alignment:")
    g = gen(120)
    # global/global: rows grid S=5 (overlap_size[0]), columns grid S=4 ([1]); per image its own frame
    Hf = Wf = 4
    pairs = [GRID_PAIRS[0], GRID_PAIRS[1], GRID_PAIRS[6]]
    gr = torch.stack([r32(R.overlap_grids(a, b, 5)[0]) for _, a, b in pairs])
    gc = torch.stack([r32(R.overlap_grids(a, b, 4)[0]) for _, a, b in pairs])
    Rel = randn(g, 3, 2, 16, 16).requires_grad_()
    out = R.align_relation(Rel, gr, gc, Hf, Wf)
    up = randn(g, *out.shape)
    (gR,) = torch.autograd.grad((out * up).sum(), [Rel])
    # explicit bilinear formula of 6.2 against F.grid_sample
    fm = randn(g, 3, 5, Hf, Wf)
    err = max(maxerr(R.grid_sample_ref(fm, gr), R.grid_sample(fm, gr)), maxerr(R.grid_sample_ref(fm, gc), R.grid_sample(fm, gc)))
    report("bilinear explicit vs F.grid_sample", err, 1e-12)
    rec = {"input.relation": Rel, "input.grid_rows": gr, "input.grid_cols": gc, "output.aligned": out,
           "upstream.aligned": up, "grad.input.relation": gR}
    save("align_gg.safetensors", rec, {"Hf": Hf, "Wf": Wf, "num_heads": 2, "S_rows": 5, "S_cols": 4,
                                       "pairs": [p[0] for p in pairs], "frame": "a"},
         "two-pass alignment (keys with grid_cols first, then queries with grid_rows); images: overlap, flipped, no-overlap (-2)")

    # local/global: teacher raw global relation (4x4 map) with the global-frame grid,
    # student local relation (2x2 map) with the local-frame grid, S = 6 both axes
    lg = [("nested", (20, 10, 300, 280, 0), (200, 100, 90, 80, 1)), ("partial", (60, 100, 250, 230, 1), (300, 20, 100, 110, 0))]
    g_glob = torch.stack([r32(R.overlap_grids(a, b, 6)[0]) for _, a, b in lg])
    g_loc = torch.stack([r32(R.overlap_grids(a, b, 6)[1]) for _, a, b in lg])
    Rt = randn(g, 2, 2, 16, 16).requires_grad_()
    Rs = randn(g, 2, 2, 4, 4).requires_grad_()
    at = R.align_relation(Rt, g_glob, g_glob, 4, 4)
    as_ = R.align_relation(Rs, g_loc, g_loc, 2, 2)
    ut, us = randn(g, *at.shape), randn(g, *as_.shape)
    gt, gs = torch.autograd.grad((at * ut).sum() + (as_ * us).sum(), [Rt, Rs])
    rec = {"input.teacher_relation": Rt, "input.student_relation": Rs, "input.grid_global": g_glob,
           "input.grid_local": g_loc, "input.mapping_global": torch.tensor([p[1] for p in lg], dtype=torch.float64),
           "input.mapping_local": torch.tensor([p[2] for p in lg], dtype=torch.float64),
           "output.teacher_aligned": at, "output.student_aligned": as_, "upstream.teacher_aligned": ut,
           "upstream.student_aligned": us, "grad.input.teacher_relation": gt, "grad.input.student_relation": gs}
    save("align_lg.safetensors", rec, {"global_hw": [4, 4], "local_hw": [2, 2], "num_heads": 2, "S": 6,
                                       "pairs": [p[0] for p in lg]},
         "local/global two-pass alignment with one 6x6 grid on both axes (no temperature applied here)")


def check_shortcut_features():
    """Shortcut 1 on random feature maps: values and gradients."""
    print("shortcut 1 (sample features first) on random maps:")
    g = gen(130)
    worst_v, worst_g = 0.0, 0.0
    settings = [  # (D, heads, Hf, Wf, pairs, S_rows, S_cols, frame)
        (8, 2, 4, 4, [GRID_PAIRS[0], GRID_PAIRS[1], GRID_PAIRS[6]], 5, 4, 0),
        (12, 3, 4, 4, [GRID_PAIRS[3], GRID_PAIRS[4], GRID_PAIRS[5]], 13, 13, 1),
        (8, 2, 2, 2, [GRID_PAIRS[2], GRID_PAIRS[3]], 6, 6, 1),
        (6, 1, 6, 6, [GRID_PAIRS[0], GRID_PAIRS[7]], 6, 6, 0),
    ]
    for D, h, Hf, Wf, pairs, Sr, Sc, fr in settings:
        B = len(pairs)
        gr = torch.stack([r32(R.overlap_grids(a, b, Sr)[fr]) for _, a, b in pairs])
        gc = torch.stack([r32(R.overlap_grids(a, b, Sc)[fr]) for _, a, b in pairs])
        Z = torch.relu(randn(g, B, D, Hf, Wf)).requires_grad_()
        two = R.align_relation(R.pixel_relation(Z, h), gr, gc, Hf, Wf)
        one = R.aligned_relation_from_features(Z, gr, gc, h)
        up = randn(g, *two.shape)
        (g2,) = torch.autograd.grad((two * up).sum(), [Z])
        (g1,) = torch.autograd.grad((one * up).sum(), [Z])
        worst_v = max(worst_v, maxerr(two, one))
        worst_g = max(worst_g, maxerr(g2, g1))
    report("shortcut 1, random maps, values", worst_v, 1e-12)
    report("shortcut 1, random maps, gradients", worst_g, 1e-12)


def make_schedule():
    rec, cfg = {}, {}
    for name, (w0, w1, ew, E, P) in {
        "vit_small_class": (0.04, 0.07, 30, 100, 0), "vit_small_patch": (0.04, 0.07, 30, 100, 0),
        "vit_base_class": (0.04, 0.07, 50, 100, 0), "patch_pred_start_5": (0.04, 0.07, 30, 100, 5),
    }.items():
        rec[f"output.{name}"] = torch.tensor(R.teacher_temp_schedule(w0, w1, ew, E, P))
        cfg[name] = {"warmup_temp": w0, "final_temp": w1, "warmup_epochs": ew, "epochs": E, "start_epoch": P}
    save("schedule.safetensors", rec, cfg, "per-epoch teacher temperatures (method 7.1), index = epoch")


# --------------------------------------------------------------------------
# loss terms

def make_loss_cls():
    g = gen(140)
    G, L, B, K = 2, 3, 3, 10
    cfg = {"G": G, "L": L, "B": B, "K": K, "teacher_temp": 0.05, "student_temp": 0.1, "center_momentum": 0.9}
    t = rand(g, G * B, K, lo=-1, hi=1)
    s = rand(g, (G + L) * B, K, lo=-1, hi=1).requires_grad_()
    c = randn(g, 1, K, std=0.1)
    # the iBOT loss needs patch inputs; a dummy one-token, unmasked patch part contributes 0 to 'mim'
    tp = torch.zeros(G * B, 1, K)
    sp = torch.zeros(G * B, 1, K)
    out = R.ibot_loss(s, sp, t, tp, torch.zeros(G * B, 1, dtype=torch.bool), c, torch.zeros(1, 1, K), G,
                      cfg["teacher_temp"], 0.07, cfg["student_temp"])
    (gs,) = torch.autograd.grad(out["cls"], [s])
    rec = {"input.teacher_cls": t, "input.student_cls": s, "input.center": c, "output.loss": out["cls"],
           "output.center": out["center"], "grad.input.student_cls": gs}
    save("loss_cls.safetensors", rec, cfg, "iBOT [CLS] loss (method 7.2) and the class-centre update (7.4)")


def make_loss_mim():
    g = gen(141)
    G, B, Hp, K = 2, 3, 3, 10
    cfg = {"G": G, "B": B, "Hp": Hp, "Wp": Hp, "K": K, "teacher_patch_temp": 0.06, "student_temp": 0.1,
           "center_momentum2": 0.9}
    t = rand(g, G * B, Hp * Hp, K, lo=-1, hi=1)
    s = rand(g, G * B, Hp * Hp, K, lo=-1, hi=1).requires_grad_()
    c2 = randn(g, 1, 1, K, std=0.1)
    masks = torch.rand(G * B, Hp, Hp, generator=g) < 0.4
    masks[1] = False  # crop 1, image 1: unmasked (contributes 0, still counts in the mean)
    masks[4] = True   # crop 2, image 1: fully masked
    scls = torch.zeros(G * B, K)  # with 2 global crops only, the cls part is separate
    out = R.ibot_loss(scls, s, torch.zeros(G * B, K), t, masks, torch.zeros(1, K), c2, G, 0.05,
                      cfg["teacher_patch_temp"], cfg["student_temp"])
    (gs,) = torch.autograd.grad(out["mim"], [s])
    rec = {"input.teacher_patch": t, "input.student_patch": s, "input.masks": masks, "input.center2": c2,
           "output.loss": out["mim"], "output.center2": out["center2"], "grad.input.student_patch": gs}
    save("loss_mim.safetensors", rec, cfg, "iBOT masked-patch loss (method 7.3) and the patch-centre update (7.4)")


def make_loss_pixel():
    g = gen(142)
    G, L, B, h, Sr, Sc, S = 2, 2, 2, 2, 5, 4, 6
    cfg = {"G": G, "L": L, "B": B, "num_heads": h, "global_hw": [4, 4], "local_hw": [2, 2], "S_rows_gg": Sr,
           "S_cols_gg": Sc, "S_lg": S, "temp_pixel": 0.5, "student_temp": 1.0}
    t_gg = randn(g, G * B, h, Sr * Sr, Sc * Sc, std=2.0)
    s_gg = randn(g, G * B, h, Sr * Sr, Sc * Sc, std=2.0).requires_grad_()
    t_raw = randn(g, G * B, h, 16, 16, std=2.0)
    s_raw = randn(g, L * B, h, 4, 4, std=2.0).requires_grad_()
    # local/global pairs (global g, local l) per image b, index g*L + l
    glob = [[(20, 10, 300, 280, 0), (0, 0, 400, 400, 1)], [(150, 60, 320, 290, 1), (60, 100, 250, 230, 0)]]
    loc = [[(200, 100, 90, 80, 0), (300, 20, 100, 110, 1)], [(0, 250, 120, 100, 1), (100, 150, 64, 64, 0)]]
    gl = torch.zeros(G * L, B, S, S, 2)
    gg = torch.zeros(G * L, B, S, S, 2)
    for gi in range(G):
        for li in range(L):
            for b in range(B):
                a_loc, a_glob = R.overlap_grids(loc[li][b], glob[gi][b], S)
                gl[gi * L + li, b], gg[gi * L + li, b] = r32(a_loc), r32(a_glob)
    terms = R.sere_pixel_terms(t_gg, s_gg, t_raw, s_raw, gl, gg, G, L, (4, 4), (2, 2), cfg["temp_pixel"])
    loss = sum(terms) / len(terms)
    gs_gg, gs_raw = torch.autograd.grad(loss, [s_gg, s_raw])
    rec = {"input.teacher_gg": t_gg, "input.student_gg": s_gg, "input.teacher_raw_global": t_raw,
           "input.student_raw_local": s_raw, "input.grids_lg_local": gl, "input.grids_lg_global": gg,
           "input.mappings_global": torch.tensor(glob, dtype=torch.float64),
           "input.mappings_local": torch.tensor(loc, dtype=torch.float64),
           "output.loss": loss, "output.terms": torch.stack(terms),
           "grad.input.student_gg": gs_gg, "grad.input.student_raw_local": gs_raw}
    save("loss_pixel.safetensors", rec, cfg, "SERE pixel loss (method 7.5): 2 global/global + G*L local/global terms")


def make_loss_channel():
    g = gen(143)
    G, L, B, D = 2, 3, 2, 6
    cfg = {"G": G, "L": L, "B": B, "D": D, "temp_channel": 0.1, "student_temp": 1.0}
    t = randn(g, G * B, D, D, std=0.3)
    sg = randn(g, G * B, D, D).requires_grad_()
    sl = randn(g, L * B, D, D).requires_grad_()
    terms = R.sere_channel_terms(t, sg, sl, G, L, cfg["temp_channel"])
    loss = sum(terms) / len(terms)
    g1, g2 = torch.autograd.grad(loss, [sg, sl])
    rec = {"input.teacher": t, "input.student_global": sg, "input.student_local": sl, "output.loss": loss,
           "output.terms": torch.stack(terms), "grad.input.student_global": g1, "grad.input.student_local": g2}
    save("loss_channel.safetensors", rec, cfg, "SERE channel loss (method 7.6): G*(G-1) + G*L terms")


# --------------------------------------------------------------------------
# the complete tiny training-loss evaluation

TINY = {
    "arch": "tiny", "img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0,
    "drop_path": 0.0, "global_size": 64, "local_size": 32, "G": 2, "L": 2, "B": 2,
    "head_hidden_dim": 64, "head_bottleneck_dim": 32, "out_dim": 128, "shared_head": True,
    "shared_head_teacher": True, "norm_last_layer": False, "alpha": 0.2, "beta": 0.5,
    "epoch": 5, "warmup_teacher_temp": 0.04, "teacher_temp_final": 0.07, "warmup_teacher_patch_temp": 0.05,
    "teacher_patch_temp_final": 0.08, "warmup_teacher_temp_epochs": 30, "epochs": 100, "pred_start_epoch": 0,
    "student_temp": 0.1, "center_momentum": 0.9, "temp_pixel": 0.5, "temp_channel": 0.1, "sigma_global": 14.0,
    "sigma_local": 6.0, "overlap_size": [13, 13], "lg_grid_size": 6, "lambda1": 1.0, "lambda2": 1.0,
    "world_size": 1, "accum_iter": 1, "bn_mode": "train", "bn_eps": R.BN_EPS, "bn_momentum": R.BN_MOMENTUM,
    "teacher_construction": "student parameters + 0.05 * rms(tensor) * N(0,1) per element (no masked_embed); own BN buffers",
}
TINY_MAP_GLOBAL = [[(20, 10, 300, 280, 0), (0, 0, 400, 400, 1)],       # [g][b]
                   [(150, 60, 320, 290, 1), (60, 100, 250, 230, 0)]]
TINY_MAP_LOCAL = [[(200, 100, 90, 80, 0), (300, 20, 100, 110, 1)],    # [l][b]
                  [(0, 250, 120, 100, 1), (100, 150, 64, 64, 0)]]
TINY_IMAGE_WH = [(480, 360), (400, 400)]


def build_tiny(g):
    c = TINY

    def backbone(mim):
        return R.VisionTransformer(c["img_size"], c["patch_size"], c["embed_dim"], c["depth"], c["num_heads"],
                                   c["mlp_ratio"], c["drop_path"], mim, c["sigma_global"], c["sigma_local"])

    student = R.SereModel(backbone(True), R.IBOTHead(c["embed_dim"], c["out_dim"], c["head_hidden_dim"],
                                                     c["head_bottleneck_dim"], c["norm_last_layer"], c["shared_head"]))
    test_init_(student, g)
    teacher = R.SereModel(backbone(False), R.IBOTHead(c["embed_dim"], c["out_dim"], c["head_hidden_dim"],
                                                      c["head_bottleneck_dim"], True, c["shared_head_teacher"]))
    test_init_(teacher, g)  # gives the teacher its own BN buffers; parameters overwritten below
    sp = dict(student.named_parameters())
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            src = sp[n]
            rms = src.pow(2).mean().sqrt().clamp(min=1e-3)
            p.copy_(src + 0.05 * rms * torch.randn(src.shape, generator=g))
    round_module_(teacher)
    student.train()
    teacher.train()
    return student, teacher


def tiny_inputs(g):
    c = TINY
    G, L, B = c["G"], c["L"], c["B"]
    glob = randn(g, G * B, 3, c["global_size"], c["global_size"])
    loc = randn(g, L * B, 3, c["local_size"], c["local_size"])
    Hp = c["global_size"] // c["patch_size"]
    masks = torch.zeros(G * B, Hp, Hp, dtype=torch.bool)
    masks[0, 0:2, 1:4] = True           # crop 1, image 0: 6 masked tokens
    masks[0, 3, 0] = True               # (7 in all)
    # crop 1, image 1 (row 1): unmasked
    masks[2, 2:4, 2:4] = True           # crop 2, image 0: 4 masked tokens
    masks[3, 1:4, 0:2] = True           # crop 2, image 1: 6 masked tokens
    S0, S1 = c["overlap_size"]
    rows = torch.zeros(G * B, S0, S0, 2)
    cols = torch.zeros(G * B, S1, S1, 2)
    for b in range(B):
        a0, a1 = R.overlap_grids(TINY_MAP_GLOBAL[0][b], TINY_MAP_GLOBAL[1][b], S0)
        c0, c1 = R.overlap_grids(TINY_MAP_GLOBAL[0][b], TINY_MAP_GLOBAL[1][b], S1)
        rows[b], rows[B + b] = r32(a0), r32(a1)
        cols[b], cols[B + b] = r32(c0), r32(c1)
    S = c["lg_grid_size"]
    gl = torch.zeros(G * L, B, S, S, 2)
    gg = torch.zeros(G * L, B, S, S, 2)
    for gi in range(G):
        for li in range(L):
            for b in range(B):
                a_loc, a_glob = R.overlap_grids(TINY_MAP_LOCAL[li][b], TINY_MAP_GLOBAL[gi][b], S)
                gl[gi * L + li, b], gg[gi * L + li, b] = r32(a_loc), r32(a_glob)
    center = randn(g, 1, c["out_dim"], std=0.1)
    center2 = randn(g, 1, 1, c["out_dim"], std=0.1)
    return glob, loc, masks, rows, cols, gl, gg, center, center2


def tiny_loss_cfg():
    c = TINY
    tt = R.teacher_temp_schedule(c["warmup_teacher_temp"], c["teacher_temp_final"], c["warmup_teacher_temp_epochs"],
                                 c["epochs"])[c["epoch"]]
    tpt = R.teacher_temp_schedule(c["warmup_teacher_patch_temp"], c["teacher_patch_temp_final"],
                                  c["warmup_teacher_temp_epochs"], c["epochs"], c["pred_start_epoch"])[c["epoch"]]
    return {"G": c["G"], "L": c["L"], "alpha": c["alpha"], "beta": c["beta"], "teacher_temp": tt,
            "teacher_patch_temp": tpt, "student_temp": c["student_temp"], "temp_pixel": c["temp_pixel"],
            "temp_channel": c["temp_channel"]}


def make_model_tiny(write=True):
    print("tiny model, complete loss:")
    g = gen(200)
    student, teacher = build_tiny(g)
    glob, loc, masks, rows, cols, gl, gg, center, center2 = tiny_inputs(g)
    lcfg = tiny_loss_cfg()
    s0, t0 = copy.deepcopy(student), copy.deepcopy(teacher)

    out = R.training_loss(student, teacher, glob, loc, masks, rows, cols, gl, gg, center, center2, lcfg)
    params = dict(student.named_parameters())
    grads = torch.autograd.grad(out["total"], list(params.values()), allow_unused=True)
    grads = {n: (gr if gr is not None else torch.zeros_like(params[n])) for n, gr in zip(params, grads)}

    # --- shortcut 1: pixel relations aligned by sampling features first
    s1, t1 = copy.deepcopy(s0), copy.deepcopy(t0)
    o1 = R.training_loss(s1, t1, glob, loc, masks, rows, cols, gl, gg, center, center2, lcfg, pixel_path="features")
    p1 = dict(s1.named_parameters())
    g1 = torch.autograd.grad(o1["total"], list(p1.values()), allow_unused=True)
    report("shortcut 1, tiny model, pixel loss", maxerr(out["pixel"], o1["pixel"]), 1e-12)
    report("shortcut 1, tiny model, pixel terms", maxerr(out["pixel_terms"], o1["pixel_terms"]), 1e-12)
    report("shortcut 1, tiny model, aligned gg relations (teacher, student)",
           max(maxerr(out["teacher_gg"], o1["teacher_gg"]), maxerr(out["student_gg"], o1["student_gg"])), 1e-12)
    report("shortcut 1, tiny model, total loss", maxerr(out["total"], o1["total"]), 1e-12)
    report("shortcut 1, tiny model, grad of total wrt every student parameter",
           max(maxerr(grads[n], gr if gr is not None else torch.zeros_like(grads[n])) for n, gr in zip(p1, g1)), 1e-11)

    # --- shortcut 2: patch head only at masked tokens + mean bottleneck
    s2, t2 = copy.deepcopy(s0), copy.deepcopy(t0)
    o2 = R.training_loss(s2, t2, glob, loc, masks, rows, cols, gl, gg, center, center2, lcfg, mim_path="shortcut")
    p2 = dict(s2.named_parameters())
    g2 = torch.autograd.grad(o2["total"], list(p2.values()), allow_unused=True)
    report("shortcut 2, tiny model, mim loss", maxerr(out["mim"], o2["mim"]), 1e-12)
    report("shortcut 2, tiny model, new patch centre", maxerr(out["center2"], o2["center2"]), 1e-12)
    report("shortcut 2, tiny model, total loss", maxerr(out["total"], o2["total"]), 1e-12)
    report("shortcut 2, tiny model, grad of total wrt every student parameter",
           max(maxerr(grads[n], gr if gr is not None else torch.zeros_like(grads[n])) for n, gr in zip(p2, g2)), 1e-11)
    # and the MIM gradient alone (the total's gradient is dominated by other terms)
    s3, t3 = copy.deepcopy(s0), copy.deepcopy(t0)
    s4, t4 = copy.deepcopy(s0), copy.deepcopy(t0)
    o3 = R.training_loss(s3, t3, glob, loc, masks, rows, cols, gl, gg, center, center2, lcfg)
    o4 = R.training_loss(s4, t4, glob, loc, masks, rows, cols, gl, gg, center, center2, lcfg, mim_path="shortcut")
    ga = torch.autograd.grad(o3["mim"], list(s3.parameters()), allow_unused=True)
    gb = torch.autograd.grad(o4["mim"], list(s4.parameters()), allow_unused=True)
    err = max(maxerr(a if a is not None else torch.zeros(1), b if b is not None else torch.zeros(1)) for a, b in zip(ga, gb))
    report("shortcut 2, tiny model, grad of mim wrt every student parameter", err, 1e-12)

    if not write:
        return
    c = TINY
    rec = {}
    rec.update({"student." + k: v for k, v in s0.state_dict().items()})
    rec.update({"teacher." + k: v for k, v in t0.state_dict().items()})
    rec.update({"after.student." + k: v for k, v in buffers_after(student, "").items()})
    rec.update({"after.teacher." + k: v for k, v in buffers_after(teacher, "").items()})
    rec.update({"grad.student." + n: v for n, v in grads.items()})
    rec.update({
        "input.global_crops": glob, "input.local_crops": loc, "input.masks": masks,
        "input.grids_gg_rows": rows, "input.grids_gg_cols": cols,
        "input.grids_lg_local": gl, "input.grids_lg_global": gg,
        "input.mappings_global": torch.tensor(TINY_MAP_GLOBAL, dtype=torch.float64),
        "input.mappings_local": torch.tensor(TINY_MAP_LOCAL, dtype=torch.float64),
        "input.image_wh": torch.tensor(TINY_IMAGE_WH, dtype=torch.float64),
        "input.center": center, "input.center2": center2,
        "output.loss.total": out["total"], "output.loss.ibot": out["ibot"], "output.loss.cls": out["cls"],
        "output.loss.mim": out["mim"], "output.loss.pixel": out["pixel"], "output.loss.channel": out["channel"],
        "output.loss.pixel_terms": out["pixel_terms"], "output.loss.channel_terms": out["channel_terms"],
        "output.center": out["center"], "output.center2": out["center2"],
        "output.teacher.cls": out["teacher"]["cls"], "output.teacher.patch": out["teacher"]["patch"],
        "output.teacher.channel_z": out["teacher"]["channel_z"], "output.teacher.pixel_z": out["teacher"]["pixel_z"],
        "output.student.cls": torch.cat([out["student_global"]["cls"], out["student_local"]["cls"]], 0),
        "output.student.patch_global": out["student_global"]["patch"],
        "output.student.channel_p_global": out["student_global"]["channel_p"],
        "output.student.channel_p_local": out["student_local"]["channel_p"],
        "output.student.pixel_p_global": out["student_global"]["pixel_p"],
        "output.student.pixel_p_local": out["student_local"]["pixel_p"],
    })
    cfg = dict(c, teacher_temp=lcfg["teacher_temp"], teacher_patch_temp=lcfg["teacher_patch_temp"],
               ibot_weight=(4 - c["alpha"] - c["beta"]) / 2)
    save("model_tiny.safetensors", rec, cfg,
         "one complete iBOT+SERE training-loss evaluation of a tiny model (student/teacher state, inputs, every loss term, new centres, student gradients)")
    print("  losses: " + ", ".join(f"{k} {out[k].item():.6f}" for k in ("total", "cls", "mim", "pixel", "channel")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="run the verifications only, write nothing")
    args = ap.parse_args()
    if args.check:
        make_pos_interp_check_only()
        check_shortcut_features()
        make_model_tiny(write=False)
        return
    for f in (make_linear, make_layernorm, make_mlp, make_attention, make_block, make_patch_embed, make_pos_interp,
              make_vit, lambda: make_ibot_head(True), lambda: make_ibot_head(False),
              lambda: make_sere_head("channel", False), lambda: make_sere_head("channel", True),
              lambda: make_sere_head("pixel", False), lambda: make_sere_head("pixel", True),
              make_overlap_grid, make_align, check_shortcut_features, make_schedule,
              make_loss_cls, make_loss_mim, make_loss_pixel, make_loss_channel, make_model_tiny):
        f()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"total size of {os.path.relpath(OUT)}: {total} bytes")
    print("verification summary (max abs errors, float64):")
    for k, v in REPORT.items():
        print(f"  {k}: {v:.3e}")


def make_pos_interp_check_only():
    g = gen(107)
    worst = 0.0
    for M, Hp, Wp in ((14, 6, 6), (4, 2, 2), (4, 3, 5), (14, 7, 9)):
        pe = randn(g, 1, 1 + M * M, 4)
        worst = max(worst, maxerr(R.interpolate_pos_embed(pe, Hp, Wp), R.interpolate_pos_embed(pe, Hp, Wp, use_torch=True)))
    report("bicubic explicit vs F.interpolate", worst, 1e-12)


if __name__ == "__main__":
    main()
