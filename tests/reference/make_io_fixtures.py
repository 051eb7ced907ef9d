#!/usr/bin/env python3
"""make_io_fixtures.py — writes the safetensors fixtures that tests/lua/test_io.lua
loads, using the real `safetensors` library (pip install safetensors numpy), and
checks the other direction: files written by sere load in `safetensors`.

    python3 tests/reference/make_io_fixtures.py             # (re)write tests/data/io/*.safetensors
    python3 tests/reference/make_io_fixtures.py --verify build/sere
        # sere loads every fixture and saves it again; safetensors must read the
        # copies back with the same values (F16/F64 come back as F32, as sere
        # converts them on load) and the same metadata.

The values are small and fixed; test_io.lua spells out the same numbers.
BF16 goes through safetensors' raw serializer (numpy has no bfloat16).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import safetensors
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "data", "io"))

MIXED = {
    "weight": np.array([[0.5, -1.25, 3.0], [1e-3, -7.75, 42.0]], dtype=np.float32),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "steps": np.array([1, -2, 2**62 + 1, -(2**63)], dtype=np.int64),
    "counts": np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype=np.int32),
    "pixels": np.array([0, 1, 128, 255], dtype=np.uint8),
    "mask": np.array([[True, False], [False, True]]),
}
MIXED_META = {"format": "np", "note": 'h\u00e9llo "quoted"\n\u2713'}

HALF_DOUBLE = {
    "h": np.array([[1.0, -2.5, 65504.0, 2.0**-24], [0.1, np.inf, -0.0, -np.inf]], dtype=np.float16),
    "d": np.array([0.1, -1e10, 1e-50], dtype=np.float64),
}

# bf16 bit patterns: 1.0, -2.5, +inf, the smallest subnormal
BF16_BITS = np.array([[0x3F80, 0xC020], [0x7F80, 0x0001]], dtype="<u2")
BF16_F32 = np.array([1.0], dtype=np.float32)
BF16_META = {"written_by": "safetensors.serialize"}


def write_bf16(path):
    specs = {
        "b": safetensors.TensorSpec(dtype="bfloat16", shape=list(BF16_BITS.shape),
                                    data_ptr=BF16_BITS.ctypes.data, data_len=BF16_BITS.nbytes),
        "f": safetensors.TensorSpec(dtype="float32", shape=list(BF16_F32.shape),
                                    data_ptr=BF16_F32.ctypes.data, data_len=BF16_F32.nbytes),
    }
    safetensors.serialize_file(specs, path, metadata=BF16_META)


def write_fixtures():
    os.makedirs(OUT, exist_ok=True)
    save_file(MIXED, os.path.join(OUT, "mixed.safetensors"), metadata=MIXED_META)
    save_file(HALF_DOUBLE, os.path.join(OUT, "half_double.safetensors"))
    write_bf16(os.path.join(OUT, "bf16.safetensors"))
    for name in sorted(os.listdir(OUT)):
        print(f"wrote {os.path.join(OUT, name)} ({os.path.getsize(os.path.join(OUT, name))} bytes)")


def expect_equal(what, got, want):
    if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
        sys.exit(f"MISMATCH {what}: got {got.dtype} {got.shape} {got!r}, want {want.dtype} {want.shape} {want!r}")


def verify(sere):
    with tempfile.TemporaryDirectory() as tmp:
        names = ["mixed", "half_double", "bf16"]
        lua = ["local core = require 'sere.core'"]
        for n in names:
            src, dst = os.path.join(OUT, n + ".safetensors"), os.path.join(tmp, n + ".safetensors")
            lua.append(f"do local t, m = core.io_load({src!r}); core.io_save({dst!r}, t, m) end")
        script = os.path.join(tmp, "resave.lua")
        with open(script, "w") as f:
            f.write("\n".join(lua) + "\n")
        subprocess.run([sere, script], check=True)

        path = os.path.join(tmp, "mixed.safetensors")
        got = load_file(path)
        for k, v in MIXED.items():
            expect_equal(f"mixed/{k}", got[k], v)
        with safetensors.safe_open(path, "np") as f:
            if f.metadata() != MIXED_META:
                sys.exit(f"MISMATCH mixed metadata: {f.metadata()!r}")

        got = load_file(os.path.join(tmp, "half_double.safetensors"))
        for k, v in HALF_DOUBLE.items():
            expect_equal(f"half_double/{k}", got[k], v.astype(np.float32))

        path = os.path.join(tmp, "bf16.safetensors")
        with open(path, "rb") as f:
            got = dict(safetensors.deserialize(f.read()))
        b = got["b"]
        if b["dtype"] != "BF16" or b["shape"] != [2, 2] or bytes(b["data"]) != BF16_BITS.tobytes():
            sys.exit(f"MISMATCH bf16/b: {b!r}")
        expect_equal("bf16/f", np.frombuffer(bytes(got["f"]["data"]), dtype="<f4"), BF16_F32)
        with safetensors.safe_open(path, "np") as f:
            if f.metadata() != BF16_META:
                sys.exit(f"MISMATCH bf16 metadata: {f.metadata()!r}")
    print("ok: files written by sere load in safetensors", safetensors.__version__, "with the same values")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify", metavar="SERE", help="check sere's re-saved copies with safetensors")
    args = ap.parse_args()
    if args.verify:
        verify(os.path.abspath(args.verify))
    else:
        write_fixtures()
