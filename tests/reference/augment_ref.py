"""augment_ref.py — reference outputs of the deterministic image ops of
method.md 5.4-5.5, computed with Pillow 9.4 and torchvision 0.14 exactly as
the reference pipeline calls them, on small crops of the test photographs.
test_augment.lua must reproduce them byte for byte.

    /usr/bin/python3 tests/reference/augment_ref.py        # writes tests/data/augment/*.safetensors

Each file holds `input.image` (u8 [h, w, 3], a region of one photo) and one
`output.<case>` per operation (u8 [h, w, 3]; f32 [3, h, w] for normalise);
the metadata lists the case parameters. Resize cases are named
`resize_<x>_<y>_<w>_<h>_<ow>_<oh>` (box in input pixels -> output size) and
use torchvision's resized_crop: img.crop(box).resize((ow, oh), BICUBIC).

Besides the three small regions: `large.safetensors`, a 128x96 region with
crop-sized resizes (strong downscales with long filters, upscales, sizes
off the vector widths) and blurs, and `colours.safetensors`, a 64x48 image
of seeded random colours plus every grey, the pure and mixed hues and
channel ties, under every colour operation at many factors.
"""
import os
import sys

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, os.path.dirname(__file__))
from st import save  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
IMAGES = os.path.join(ROOT, "tests", "data", "images")
OUT = os.path.join(ROOT, "tests", "data", "augment")

# (photo, region left, top, width, height): colourful, textured regions
SOURCES = {
    "cat": ("chelsea_cat_451x300_q90.jpg", 180, 60, 40, 32),
    "coffee": ("coffee_600x400_progressive_q90.jpg", 250, 150, 40, 32),
    "astronaut": ("astronaut_512x512_rgb.png", 200, 150, 32, 40),
}

LARGE = ("rocket_launch_640x427.jpg", 240, 150, 128, 96)
LARGE_RESIZES = [
    ((0, 0, None, None), (112, 112)),  # a global crop's scale, aspect change
    ((7, 5, 118, 88), (96, 96)),       # a local crop's
    ((3, 2, 124, 93), (18, 13)),       # 7x down: 31-tap filters
    ((10, 10, 30, 25), (110, 90)),     # 3.6x up
    ((1, 1, 127, 95), (127, 95)),      # identity size
]
LARGE_SIGMAS = [0.4, 1.9]
RESIZES = [  # box (x, y, w, h) in the region -> (ow, oh)
    ((0, 0, None, None), (24, 18)),   # whole region, downscale
    ((5, 7, 26, 22), (72, 56)),       # upscale, aspect change
    ((3, 2, 28, 29), (11, 13)),       # strong downscale, odd sizes
    ((6, 4, 25, 27), (25, 27)),      # identity size (a copy)
    ((1, 1, 7, 5), (40, 36)),         # tiny box, large upscale
]
COLOR = [("brightness", 0.6), ("brightness", 1.37), ("contrast", 0.63), ("contrast", 1.4),
         ("saturation", 0.8), ("saturation", 1.2), ("hue", -0.1), ("hue", 0.07), ("hue", -0.5), ("hue", 0.5),
         ("hue", 0.0)]
SIGMAS = [0.1, 0.7, 1.3, 2.0, 5.5]
COLOURS_COLOR = COLOR + [("brightness", 0.0), ("brightness", 0.999), ("brightness", 3.3), ("contrast", 0.0),
                         ("contrast", 2.9), ("saturation", 0.0), ("saturation", 0.5), ("saturation", 4.1),
                         ("hue", -0.37), ("hue", -0.03), ("hue", 0.002), ("hue", 0.013), ("hue", 0.25), ("hue", 0.41)]


def u8(img):
    return torch.from_numpy(np.array(img, dtype=np.uint8).copy())


def color_op(img, name, f):
    return {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
            "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}[name](img, f)


def resize_cases(img, rec, resizes):
    w, h = img.size
    for (x, y, bw, bh), (ow, oh) in resizes:
        bw, bh = bw or w, bh or h
        key = f"output.resize_{x}_{y}_{bw}_{bh}_{ow}_{oh}"
        rec[key] = u8(TF.resized_crop(img, y, x, bh, bw, [oh, ow], TF.InterpolationMode.BICUBIC))
        assert torch.equal(rec[key], u8(img.crop((x, y, x + bw, y + bh)).resize((ow, oh), Image.BICUBIC)))


def color_cases(img, rec, ops):
    for op, f in ops:
        rec[f"output.{op}_{f:g}"] = u8(color_op(img, op, f))
    rec["output.grayscale"] = u8(TF.rgb_to_grayscale(img, num_output_channels=3))


def make(name, photo, left, top, w, h):
    img = Image.open(os.path.join(IMAGES, photo)).convert("RGB").crop((left, top, left + w, top + h))
    rec, meta = {"input.image": u8(img)}, {"photo": photo, "region": [left, top, w, h]}
    resize_cases(img, rec, RESIZES)
    color_cases(img, rec, COLOR)
    for s in SIGMAS:
        rec[f"output.blur_{s:g}"] = u8(img.filter(ImageFilter.GaussianBlur(radius=s)))
    rec["output.solarize"] = u8(ImageOps.solarize(img, 128))
    rec["output.hflip"] = u8(TF.hflip(img))
    rec["output.normalize"] = TF.normalize(TF.to_tensor(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # one whole crop pipeline: resize, flip, jitter in a fixed order, gray, blur, solarise
    chain = TF.resized_crop(img, 3, 2, 27, 28, [32, 32], TF.InterpolationMode.BICUBIC)
    chain = TF.hflip(chain)
    for op, f in (("hue", 0.05), ("contrast", 1.3), ("brightness", 0.7), ("saturation", 1.1)):
        chain = color_op(chain, op, f)
    chain = chain.filter(ImageFilter.GaussianBlur(radius=1.1))
    rec["output.chain"] = u8(ImageOps.solarize(chain, 128))
    meta.update({"resizes": RESIZES, "color": COLOR, "sigmas": SIGMAS,
                 "chain": "box (2, 3, 28, 27) -> 32x32, hflip, hue 0.05, contrast 1.3, brightness 0.7, "
                          "saturation 1.1, blur 1.1, solarize"})
    save(os.path.join(OUT, f"{name}.safetensors"), rec, meta)


def make_large():
    photo, left, top, w, h = LARGE
    img = Image.open(os.path.join(IMAGES, photo)).convert("RGB").crop((left, top, left + w, top + h))
    rec = {"input.image": u8(img)}
    resize_cases(img, rec, LARGE_RESIZES)
    for s in LARGE_SIGMAS:
        rec[f"output.blur_{s:g}"] = u8(img.filter(ImageFilter.GaussianBlur(radius=s)))
    save(os.path.join(OUT, "large.safetensors"), rec,
         {"photo": photo, "region": [left, top, w, h], "resizes": LARGE_RESIZES, "sigmas": LARGE_SIGMAS})


def colours_image():
    """64 wide, 48 high: rows 0-3 every grey, rows 4-43 pure and mixed hues
    at random levels and channel ties (r = g > b, ...), the rest seeded
    random colours."""
    rng = np.random.default_rng(4)
    px = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    v = np.arange(256, dtype=np.uint8).reshape(4, 64)
    px[0:4] = v[:, :, None]
    lo = rng.integers(0, 256, size=(5, 64), dtype=np.uint8)
    hi = np.maximum(lo, rng.integers(0, 256, size=(5, 64), dtype=np.uint8))
    patterns = [(hi, lo, lo), (lo, hi, lo), (lo, lo, hi), (hi, hi, lo), (hi, lo, hi), (lo, hi, hi),
                (hi, hi, hi // 2), (hi // 2, hi, hi)]
    for i, (r, g, b) in enumerate(patterns):
        px[4 + 5 * i:9 + 5 * i] = np.stack([r, g, b], axis=-1)
    return Image.fromarray(px, "RGB")


def make_colours():
    img = colours_image()
    rec = {"input.image": u8(img)}
    color_cases(img, rec, COLOURS_COLOR)
    save(os.path.join(OUT, "colours.safetensors"), rec, {"color": COLOURS_COLOR})


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, src in SOURCES.items():
        make(name, *src)
    make_large()
    make_colours()
    print("wrote", ", ".join(f"{n}.safetensors" for n in list(SOURCES) + ["large", "colours"]), "to",
          os.path.relpath(OUT))


if __name__ == "__main__":
    main()
