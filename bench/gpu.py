"""Model-only films/s at batch sizes 32-512 and `pneumoscreen screen` over full-size films, on whatever device
TensorFlow sees (a GPU when there is one), with the device's peak memory. Called by bench/gpu.sh.

Usage: python bench/gpu.py [--data ../shared/data] [--films 1024] [--batch-sizes 32,64,128,256,512]
"""
import argparse
import csv
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from models.imaging import decode_image  # noqa: E402
from models.screener import Screener  # noqa: E402


def films(data: Path, count: int) -> tuple[list[np.ndarray], list[bytes], str]:
    """224 px training films (and full-size JPEGs) from DATA, or synthetic chest-like films when it is absent."""
    paths = sorted((data / "kermany-train").glob("*/*.jpeg"))
    full = [path.read_bytes() for path in sorted((data / "kermany-fullsize").glob("*/*.jpeg"))]
    if paths:
        picked = np.random.default_rng(0).choice(len(paths), min(count, len(paths)), replace=False)
        images = [decode_image(paths[i].read_bytes()) for i in picked]
        return (images * (count // len(images) + 1))[:count], full, f"{len(paths)} training films"
    from PIL import Image

    rng, synthetic = np.random.default_rng(0), []
    y, x = np.mgrid[0:224, 0:224]
    for _ in range(64):
        image = np.full((224, 224), 0.8, np.float32)
        for cx in (0.3, 0.7):
            image[((x / 224 - cx) / 0.15) ** 2 + ((y / 224 - 0.5) / 0.3) ** 2 < 1] = 0.2
        synthetic.append(np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1).astype(np.float32))
    jpegs = []
    for image in synthetic[:16]:
        out = io.BytesIO()
        Image.fromarray((image * 255).astype(np.uint8)).resize((1536, 1536)).save(out, format="JPEG")
        jpegs.append(out.getvalue())
    return (synthetic * (count // 64 + 1))[:count], jpegs, "synthetic films (no data folder)"


def main() -> None:
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--films", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="32,64,128,256,512")
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    device = "GPU:0" if gpus else "CPU:0"
    print(f"TensorFlow {tf.__version__} on {', '.join(g.name for g in gpus) if gpus else 'the CPU (no GPU seen)'}")
    images, full, source = films(args.data, args.films)
    screener = Screener.load(ROOT / "models" / "weights")
    print(f"{len(images)} films ({source}); model {screener.version}")
    for batch_size in (int(size) for size in args.batch_sizes.split(",")):
        screener.screen(images[:batch_size])  # trace and warm up at this shape
        started = time.perf_counter()
        for start in range(0, len(images), batch_size):
            screener.screen(images[start:start + batch_size])
        elapsed = time.perf_counter() - started
        memory = ""
        if gpus:
            peak = tf.config.experimental.get_memory_info(device)["peak"]
            memory = f", peak GPU memory {peak / 2**30:.2f} GiB"
            tf.config.experimental.reset_memory_stats(device)
        print(f"batch {batch_size:4d}: {len(images) / elapsed:8.1f} films/s (screen: crop, 3 members, Grad-CAM, "
              f"gate, flags){memory}")
    if full:
        from pneumoscreen.screening import screen_to_csv

        with tempfile.TemporaryDirectory() as folder:
            for i, data in enumerate(full):
                (Path(folder) / f"{i:04d}.jpeg").write_bytes(data)
            summary = screen_to_csv([Path(folder)], Settings.from_env({"PNEUMOSCREEN_BATCH_SIZE": "128"}),
                                    csv.writer(io.StringIO()), ["name"])
        print(f"pneumoscreen screen over the {len(full)} films of kermany-fullsize (original sizes):{summary}")


if __name__ == "__main__":
    main()
