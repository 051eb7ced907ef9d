"""data_torch.py -- the reference multi-crop augmentation (method.md 5.2-5.8)
in torchvision + PIL, on one core: for every image of a folder, decode it,
make 2 global crops (224) and 10 local crops (96) with their own random
augmentations, the iBOT-style block masks for every crop and the overlap
grids, as a reference data loader worker does. Prints samples per second.

  /usr/bin/python3 bench/data_torch.py FOLDER [samples]

FOLDER is searched recursively for .jpg/.jpeg/.png files; `samples` (default
48) full samples are made, cycling over the files. bench/data.lua runs this
and compares; it reads the lines `samples_per_s<TAB>value` (wall clock)
and `samples_per_cpu_s<TAB>value` (process CPU time).
"""
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as F

torch.set_num_threads(1)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PATCH = 16


class GaussianBlur:
    """PIL's Gaussian blur with sigma ~ U(0.1, 2.0), applied when u <= p."""

    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class Solarize:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img, 128) if random.random() < self.p else img


class Crop:
    """One crop: RandomResizedCrop with its box and flip recorded as the
    mapping (x, y, w, h, f), then colour, blur, solarise, tensor."""

    def __init__(self, size, scale, p_blur, p_solarize=0.0):
        self.size, self.scale = size, scale
        self.rest = T.Compose([
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            GaussianBlur(p_blur),
            Solarize(p_solarize),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ])

    def __call__(self, img):
        top, left, h, w = T.RandomResizedCrop.get_params(img, self.scale, (3 / 4, 4 / 3))
        img = F.resized_crop(img, top, left, h, w, [self.size, self.size], T.InterpolationMode.BICUBIC)
        flip = random.random() < 0.5
        if flip:
            img = F.hflip(img)
        return self.rest(img), (left, top, w, h, int(flip))


def overlap_grids(mq, mk, S):
    """Method 5.6: the S x S grid of the intersection in each crop's frame."""
    x0, y0 = max(mq[0], mk[0]), max(mq[1], mk[1])
    x1, y1 = min(mq[0] + mq[2], mk[0] + mk[2]), min(mq[1] + mq[3], mk[1] + mk[3])
    if not (x0 < x1 and y0 < y1):
        return np.full((S, S, 2), -2.0, np.float32), np.full((S, S, 2), -2.0, np.float32)
    steps = np.arange(S) / (S - 1)
    out = []
    for x, y, w, h, f in (mq, mk):
        u = (x0 - x) / w + steps * (x1 - x0) / w
        t = (y0 - y) / h + steps * (y1 - y0) / h
        if f:
            u = 1 - u
        g = np.empty((S, S, 2), np.float32)
        g[:, :, 0] = 2 * u[None, :] - 1
        g[:, :, 1] = 2 * t[:, None] - 1
        out.append(g)
    return out[0], out[1]


def block_mask(hp, wp, ratios=(0.0, 0.3), variances=(0.0, 0.2)):
    """Method 5.7: iBOT's block-wise mask with a ratio picked per crop."""
    cands = [random.uniform(m - v, m + v) if v > 0 else m for m, v in zip(ratios, variances)]
    target = random.choice(cands) * hp * wp
    mask = np.zeros((hp, wp), bool)
    count, lo = 0, (min(hp, wp) // 3) ** 2
    log_ar = (math.log(0.3), math.log(1 / 0.3))
    while count < target:
        remaining, added = target - count, 0
        for _ in range(10):
            area = random.uniform(lo, remaining)
            ar = math.exp(random.uniform(*log_ar))
            bh, bw = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if bw < wp and bh < hp:
                top, left = random.randint(0, hp - bh), random.randint(0, wp - bw)
                new = bh * bw - mask[top:top + bh, left:left + bw].sum()
                if 0 < new <= remaining:
                    mask[top:top + bh, left:left + bw] = True
                    added = new
            if added > 0:
                break
        if added == 0:
            break
        count += added
    return mask


GLOBALS = [Crop(224, (0.4, 1.0), 1.0), Crop(224, (0.4, 1.0), 0.1, 0.2)]
LOCALS = [Crop(96, (0.05, 0.4), 0.5) for _ in range(10)]


def sample(path):
    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    crops, maps = [], []
    for c in GLOBALS + LOCALS:
        t, m = c(img)
        crops.append(t)
        maps.append(m)
    grids = list(overlap_grids(maps[0], maps[1], 13)) * 2
    lg_local, lg_global = [], []
    for g in range(2):
        for l in range(10):
            a, b = overlap_grids(maps[2 + l], maps[g], 6)
            lg_local.append(a)
            lg_global.append(b)
    masks = [block_mask(t.shape[1] // PATCH, t.shape[2] // PATCH) for t in crops]
    return crops + grids + lg_local + lg_global, masks


def main():
    folder = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 48
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder, followlinks=True) for f in fs
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not files:
        sys.exit("data_torch.py: no .jpg/.jpeg/.png files under " + folder)
    random.seed(0)
    torch.manual_seed(0)
    sample(files[0])  # warm-up (imports, first allocations)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        sample(files[i % len(files)])
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    print("torchvision %s, PIL %s: %d samples from %d files in %.2f s" %
          (torchvision.__version__, Image.__version__, n, len(files), secs))
    print("samples_per_s\t%.3f" % (n / secs))
    print("samples_per_cpu_s\t%.3f" % (n / cpu))


if __name__ == "__main__":
    main()
