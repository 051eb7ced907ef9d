"""export_ref.py — PyTorch's view of a backbone exported by
tools/export_backbone.lua: loads tests/data/export/backbone.safetensors into
the reference ViT of sere_ref.py with load_state_dict(strict=True) (so the
exported names and shapes are exactly the downstream ones of method.md 10.3
and 10.4), runs it on fixed inputs and writes
tests/data/export/features.safetensors, which tests/lua/test_tools.lua
matches:

  input.native   [2, 3, 32, 32]  the native size (4 x 4 patches of 8 pixels)
  input.other    [1, 3, 48, 40]  another size: 6 x 5 patches, so the positional
                                 table is interpolated (method.md 2.4)
  output.<case>.cls        [B, D]           the class token after the final LayerNorm
  output.<case>.attention  [B, h, T, T]     the last block's attention probabilities,
                                            softmax(Q_j K_j^T d^-1/2), T = 1 + patches

Inputs are drawn in float32; the network runs in float64 from the stored
float32 weights; outputs are stored as float32. The script also checks that
its attention probabilities reproduce the last block's attention output
(A V then the projection) to float64 precision. Needs only Debian's
python3-torch:

  /usr/bin/python3 tests/reference/export_ref.py
"""
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sere_ref  # noqa: E402
from st import save  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "export")

_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def load(path):
    """A minimal safetensors reader -> (tensors, metadata)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    for name, h in header.items():
        lo, hi = h["data_offsets"]
        dtype = _DTYPES[h["dtype"]]
        t = torch.frombuffer(bytearray(data[lo:hi]), dtype=dtype) if hi > lo else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(h["shape"]).clone()
    return tensors, meta


def downstream_vit(meta):
    """The reference ViT without the training-only parts (mask embedding,
    SERE heads), in float64: the network a downstream user loads."""
    vit = sere_ref.VisionTransformer(img_size=int(meta["img_size"]), patch_size=int(meta["patch_size"]),
                                     embed_dim=int(meta["embed_dim"]), depth=int(meta["depth"]),
                                     num_heads=int(meta["heads"]), masked_im_modeling=False)
    for name in ("channel_sere", "pixel_sere", "channel_sere_local", "pixel_sere_local"):
        delattr(vit, name)
    return vit.double().eval()


def last_selfattention(vit, x):
    """[B, h, T, T] attention probabilities of the last block, checked
    against that block's own attention output."""
    t, _, _ = vit.prepare_tokens(x)
    for blk in vit.blocks[:-1]:
        t = blk(t)
    last = vit.blocks[-1]
    y = last.norm1(t)
    B, T, D = y.shape
    h = last.attn.num_heads
    d = D // h
    qkv = last.attn.qkv(y).reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = torch.softmax((q @ k.transpose(-2, -1)) * d ** -0.5, dim=-1)
    rebuilt = last.attn.proj((a @ v).transpose(1, 2).reshape(B, T, D))
    err = (rebuilt - last.attn(y)).abs().max().item()
    assert err < 1e-12, f"attention probabilities do not rebuild the block's attention: {err}"
    return a


def main():
    tensors, meta = load(os.path.join(DATA, "backbone.safetensors"))
    vit = downstream_vit(meta)
    vit.load_state_dict({k: v.double() for k, v in tensors.items()}, strict=True)
    gen = torch.Generator().manual_seed(0)
    inputs = {"native": torch.randn(2, 3, 32, 32, generator=gen), "other": torch.randn(1, 3, 48, 40, generator=gen)}
    out = {}
    with torch.no_grad():
        for case, x in inputs.items():
            xd = x.double()
            tokens, _, _, _ = vit.forward_features(xd)
            out[f"input.{case}"] = x
            out[f"output.{case}.cls"] = tokens[:, 0].float()
            out[f"output.{case}.attention"] = last_selfattention(vit, xd).float()
    save(os.path.join(DATA, "features.safetensors"), out, {
        "description": "class token and last-block attention of backbone.safetensors in sere_ref.VisionTransformer",
        "compute_dtype": "float64", "stored_dtype": "float32",
        "config": json.dumps({k: meta[k] for k in ("embed_dim", "depth", "heads", "patch_size", "img_size")}),
    })
    for k, v in out.items():
        print(f"{k}: {list(v.shape)}")


if __name__ == "__main__":
    main()
