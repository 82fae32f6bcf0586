"""Cache-build throughput against bare baselines measured in the same run.

    python bench/cache_build.py --teacher supervised_r50 --images 96 --input-size 224 --workers 1
    python bench/cache_build.py --teacher dinov2_vits14 --images 48 --workers 1 --threads 1   # ViT teachers too

Prints one table (img/s and ratios):
  * bare loader      : DataLoader decode + resize/crop to uint8, nothing else;
  * bare forward     : the teacher (+ on-device normalise + L2) on pre-decoded batches in memory;
  * full build       : ``build_cache`` (loader -> forward -> L2 -> fp16 -> background shard writes);
  * reference        : the CompRess approach: float transform in workers, fp32 forward, features
                       collected into one tensor, one ``torch.save``.
Weights are random (synthetic) in the teacher's layout; images are random JPEGs of ImageNet-like
size. Absolute numbers depend on the machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_images(root: str, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = os.path.join(root, f"c{i % 4}")
        os.makedirs(cls, exist_ok=True)
        h, w = int(rng.integers(330, 420)), int(rng.integers(400, 520))
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)  # smooth content compresses like photos
        img.save(os.path.join(cls, f"{i:05d}.jpg"), quality=90)


def random_weights(spec, path: str) -> None:
    from cache_builder.teachers import build_meta
    from cache_builder.vit_teachers import ViTTeacherSpec, create_vit_model

    if isinstance(spec, ViTTeacherSpec):  # timm's own init at the spec's input size, saved in timm names
        torch.save(create_vit_model(spec).state_dict(), path)
        return
    meta = build_meta(spec)
    sd = {}
    g = torch.Generator().manual_seed(0)
    for k, v in meta.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(v.shape, generator=g) * (0.02 if v.dim() > 1 else 0.1)
    torch.save(sd, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="supervised_r50")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU runs on a shared machine)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cache_builder.build import BuildConfig, build_cache
    from cache_builder.dataset import ImageDataset
    from cache_builder.devices import resolve_device
    from cache_builder.embed import Embedder
    from cache_builder.image_list import scan_image_folder
    from cache_builder.teachers import get_teacher_spec, load_teacher_spec

    spec = get_teacher_spec(args.teacher).with_sizes(args.input_size)
    device = resolve_device(args.device)
    tmp = tempfile.mkdtemp(prefix="bench_cache_")
    data = os.path.join(tmp, "data")
    make_images(data, args.images)
    weights = os.path.join(tmp, "w.pth")
    random_weights(spec, weights)
    images = scan_image_folder(data)
    n = len(images)
    rows = []

    # 1. bare loader
    ds = ImageDataset(images, range(n), spec.uint8_transform())
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    t = time.perf_counter()
    batches = [imgs for _, imgs, _ in loader]
    loader_s = time.perf_counter() - t
    rows.append(("bare loader (decode+resize+crop, uint8)", n / loader_s))

    # 2. bare forward on the pre-decoded batches
    model, spec, _ = load_teacher_spec(spec, weights, device)
    from cache_builder.vit_teachers import ViTTeacherSpec

    emb = Embedder(model, device, mean=spec.mean, std=spec.std, amp=True, compile=False,
                   low_precision_weights=isinstance(spec, ViTTeacherSpec))  # as build_cache does
    weights_dtype = next(emb.model.parameters()).dtype
    emb(batches[0], "float16")  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for b in batches:
        emb(b, "float16")
    if device.type == "cuda":
        torch.cuda.synchronize()
    fwd_s = time.perf_counter() - t
    rows.append(("bare teacher forward (pre-decoded, +normalise, L2, fp16)", n / fwd_s))

    # 3. full build
    cfg = BuildConfig(teacher=args.teacher, weights=weights, data=data, out=os.path.join(tmp, "cache"),
                      input_size=args.input_size, batch_size=args.batch_size, workers=args.workers,
                      device=args.device, progress=False, knn=False)
    res = build_cache(cfg).splits["train"]
    rows.append(("full build (build_cache)", res.images_per_second))

    # 4. reference approach
    tf = spec.eval_transform()

    class _FloatDS(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            from cache_builder.image_decode import decode_image

            return tf(decode_image(images.absolute(i)))

    ref_loader = torch.utils.data.DataLoader(_FloatDS(), batch_size=args.batch_size, num_workers=args.workers)
    model32 = emb.model.float()
    t = time.perf_counter()
    feats = []
    with torch.no_grad():
        for x in ref_loader:
            feats.append(model32(x.to(device)).cpu())
    torch.save(torch.cat(feats), os.path.join(tmp, "train_feats.pth.tar"))
    ref_s = time.perf_counter() - t
    rows.append(("reference (fp32, one tensor, torch.save)", n / ref_s))

    bare_fwd = rows[1][1]
    bound = min(rows[0][1], bare_fwd)
    if isinstance(spec, ViTTeacherSpec):
        import timm

        fused = "fused SDPA attention" if timm.layers.use_fused_attn() else "unfused attention"
        print(f"ViT teacher: {fused}, forward weights {weights_dtype}, autocast {emb.amp_dtype}")
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"\nteacher {args.teacher} ({spec.arch}), {n} JPEGs ~400x460 px -> {spec.input_size} px, batch {args.batch_size}, "
          f"{args.workers} workers; {machine}")
    print("| path | img/s | vs bare forward | vs min(loader, forward) |")
    print("|---|---:|---:|---:|")
    for name, ips in rows:
        print(f"| {name} | {ips:.1f} | {ips / bare_fwd:.2f} | {ips / bound:.2f} |")


if __name__ == "__main__":
    main()
