"""Cached loader vs naive decode-and-resize-per-item loader, side by side: images/s at the training size.

    python bench/loader.py                      # 64 generated 720x480 scenes, 128x128, batch 16
    python bench/loader.py --data DIR --size 256

Prints a table and writes bench/results/loader.json. The naive loader decodes both PNGs, decodes the
mask colours and resizes per item, every epoch (what a first-attempt torch Dataset does); the cached
loader reads the decode-once memmap (the first build is timed separately, it happens once per data
set and size). Target: >= 10x at 128x128.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchargs import int_at_least, output_file  # noqa: E402  (bench/benchargs.py)

from data_pipeline import (DataConfig, DataError, decode_mask, find_pairs, load_rgb, make_loaders, normalize_image,  # noqa: E402
                           prepare_dataset, resize_image, resize_mask)

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"


class NaivePngDataset(Dataset):
    """Decode + resize per item, every time: the baseline."""

    def __init__(self, samples, size):
        self.samples, self.size = samples, size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        image = resize_image(load_rgb(s.image), self.size)
        mask = resize_mask(decode_mask(load_rgb(s.mask), s.source), self.size)
        return torch.from_numpy(normalize_image(image)), torch.from_numpy(mask.astype(np.int64))


def images_per_second(loader, epochs: int) -> float:
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            seen += len(x)
    return seen / (time.perf_counter() - start)


def scenes(args, workdir: Path) -> Path:
    if args.data:
        return Path(args.data)
    from data_pipeline.synth import generate

    return generate(workdir / "scenes", count=args.count, seed=0, size=(480, 720), style=args.style,
                    workers=0, progress=False)


def run(args) -> dict:
    torch.set_num_threads(1)  # both loaders single-threaded: the comparison is about decoding work
    with tempfile.TemporaryDirectory() as tmp:
        root = scenes(args, Path(tmp))
        size = (args.size, args.size)
        cfg = DataConfig(root=str(root), image_size=size, batch_size=args.batch_size, val_fraction=0.1,
                         test_fraction=0.1, cache_dir=str(Path(tmp) / "cache"), manifest_path=str(Path(tmp) / "m.json"),
                         progress=False)
        start = time.perf_counter()
        prepare_dataset(cfg)
        build_s = time.perf_counter() - start
        train = make_loaders(cfg).train
        train_frames = set(train.dataset.cached.frames)
        samples = [s for s in find_pairs(root) if s.frame in train_frames]
        naive = DataLoader(NaivePngDataset(samples, size), batch_size=args.batch_size, shuffle=True)
        naive_ips = images_per_second(naive, 1)
        cached_ips = images_per_second(train, args.epochs)
        source = load_rgb(samples[0].image).shape[:2]
        total = len(find_pairs(root))
    return {"image_size": list(size), "source_size": list(source), "frames": len(samples),
            "batch_size": args.batch_size, "naive_images_per_s": round(naive_ips, 1),
            "cached_images_per_s": round(cached_ips, 1), "speedup": round(cached_ips / naive_ips, 1),
            "cache_build_s": round(build_s, 2), "cache_build_images_per_s": round(total / build_s, 1),
            "cached_epochs": args.epochs, "torch_threads": 1, "python": platform.python_version(),
            "machine": platform.machine()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="Kaggle-layout folder (default: generate scenes)")
    p.add_argument("--count", type=int, default=64, help="scenes to generate when --data is not given")
    p.add_argument("--style", default="simple", help="generator style for the generated scenes")
    p.add_argument("--size", type=int_at_least(1), default=128, help="training size (square)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16)
    p.add_argument("--epochs", type=int_at_least(1), default=3, help="cached epochs timed (the naive loader runs one)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    output_file(p, "--out", args.out)  # before the work: a bad path would fail only once it is done
    if args.data is None and args.count < 20:  # val and test take 10 % each: fewer leaves one empty
        p.error(f"--count {args.count}: expected at least 20 scenes (val and test take 10 % each)")
    try:
        result = run(args)
    except DataError as err:
        p.error(str(err))
    print(f"{'loader':<10}{'images/s':>12}   (at {result['image_size'][0]}x{result['image_size'][1]}, "
          f"{result['frames']} train frames of {result['source_size'][1]}x{result['source_size'][0]})")
    print(f"{'naive':<10}{result['naive_images_per_s']:>12.1f}")
    print(f"{'cached':<10}{result['cached_images_per_s']:>12.1f}   speedup x{result['speedup']}")
    print(f"first cache build: {result['cache_build_s']} s ({result['cache_build_images_per_s']} images/s, once)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
