"""Does screening's JPEG decode scale change a call? The 200 kermany-fullsize films decoded as screening does
(models.imaging.SCREEN_SIDE) against the same films decoded at 512 px, and both against their 224 px copies in
kermany-train: same calls, same flags, |logit| differences, decode time; and the out-of-scope gate over the
2,257 films of scope/ at both decode scales. Prints tables; no asserts.

Usage: .venv/bin/python bench/fullsize_decode.py [--data ../shared/data] [--weights models/weights]
"""
import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.imaging import DECODE_SIDE, SCREEN_SIDE, decode_image  # noqa: E402
from models.reasons import FlagReason  # noqa: E402
from models.screener import Screener  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights")
    args = parser.parse_args()
    with open(args.data / "kermany-fullsize" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    full = [(args.data / "kermany-fullsize" / row["file"]).read_bytes() for row in rows]
    copies = [(args.data / "kermany-train" / row["original"].removeprefix("train/")).read_bytes() for row in rows]
    screener = Screener.load(args.weights)

    def screened(name: str, films: list[np.ndarray]) -> dict:
        out = screener.outputs(films)
        findings = [screener._finding(out, i, screener.point) for i in range(len(out))]
        return {"name": name, "logit": out.logit, "call": out.probability >= screener.threshold,
                "flagged": np.array([finding.flagged for finding in findings]),
                "out of scope": np.array([FlagReason.OUT_OF_SCOPE in finding.reasons for finding in findings])}

    runs, times = [], {}
    for side in (DECODE_SIDE, SCREEN_SIDE):
        started = time.perf_counter()
        films = [decode_image(data, draft_side=side) for data in full]
        times[side] = (time.perf_counter() - started) / len(full) * 1000
        runs.append(screened(f"full size, JPEG drafted to >= {side} px", films))
    runs.append(screened("224 px copy", [decode_image(data) for data in copies]))

    print(f"{len(full)} kermany-fullsize films; decode (one thread): "
          + ", ".join(f"drafted to >= {side} px {ms:.2f} ms" for side, ms in times.items()) + "\n")
    print("| a | b | same call | same flagged | median abs logit diff | max |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for a, b in ((0, 1), (0, 2), (1, 2)):
        first, second = runs[a], runs[b]
        diff = np.abs(first["logit"] - second["logit"])
        print(f"| {first['name']} | {second['name']} | {int((first['call'] == second['call']).sum())} "
              f"| {int((first['flagged'] == second['flagged']).sum())} | {np.median(diff):.3f} | {diff.max():.3f} |")
    scope_films(args.data, screened)


def scope_films(data: Path, screened) -> None:
    paths = sorted(p for p in (data / "scope").rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    runs = [screened(str(side), [decode_image(p.read_bytes(), draft_side=side) for p in paths])
            for side in (DECODE_SIDE, SCREEN_SIDE)]
    print(f"\n{len(paths)} scope/ films: out of scope " + ", ".join(
        f"{int(run['out of scope'].sum())} drafted to >= {run['name']} px" for run in runs)
        + f"; the same gate decision for {int((runs[0]['out of scope'] == runs[1]['out of scope']).sum())}")


if __name__ == "__main__":
    main()
