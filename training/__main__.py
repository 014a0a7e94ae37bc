"""`python -m training --segmenter|--classifier|--recalibrate --data DIR --out WEIGHTS [...]`."""
import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from training.commands import recalibrate_bundle, train_member
from training.segmenter import train_segmenter

logger = logging.getLogger("training")


def main(argv: list[str] | None = None) -> None:
    """Train the segmenter or a classifier member (then recalibrate), or recalibrate alone."""
    parser = argparse.ArgumentParser(prog="python -m training", description=main.__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--segmenter", action="store_true")
    what.add_argument("--classifier", action="store_true",
                      help="train one ensemble member, then recalibrate the ensemble in --out")
    what.add_argument("--recalibrate", action="store_true",
                      help="re-derive calibration, threshold, flags and scope.npz for the weights in --out")
    parser.add_argument("--data", type=Path, required=True, help="lung-masks/ or kermany-train/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--segmenter-path", type=Path, help="segmenter.keras (classifier only)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0, help="segmenter only: the random seed")
    parser.add_argument("--member", type=int, default=0,
                        help="classifier only: ensemble member to train (0 starts a new ensemble; "
                             "N > 0 adds classifier-N.keras, seeded with N)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = shlex.join(["python", "-m", "training", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    if args.segmenter:
        meta = train_segmenter(args.data, args.out, epochs=args.epochs or 6, seed=args.seed, command=command)
    elif args.recalibrate:
        meta = recalibrate_bundle(args.data, args.out, command)
    else:
        meta = train_member(args.data, args.out, args.segmenter_path or args.out / "segmenter.keras",
                            epochs=args.epochs or 16, member=args.member, command=command)
    logger.info("done in %.0fs: %s", time.monotonic() - started, meta)


if __name__ == "__main__":
    main()
