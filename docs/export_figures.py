"""Save the validation figures that a run logged to TensorBoard as PNG files.

    python docs/export_figures.py lightning_logs/version_0 OUT_DIR [--epoch -1]

writes ``OUT_DIR/val_confusion.png``, ``OUT_DIR/val_phone_acc.png`` and (runs that have
it) ``OUT_DIR/val_segments.png``, the images of the given validation epoch (0-based; -1, the default, is the last), byte for byte as
they are in the event file. The figures in docs/outputs.md were made with it.
"""

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = ("val/confusion", "val/phone_acc", "val/segments")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder holding an events.out.tfevents.* file")
    parser.add_argument("out_dir")
    parser.add_argument("--epoch", type=int, default=-1, help="which validation epoch (0-based; -1: the last)")
    args = parser.parse_args()
    events = EventAccumulator(args.run_dir, size_guidance={"images": 0}).Reload()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for tag in TAGS:
        if tag not in events.Tags()["images"]:  # val/segments: not in runs made before it
            print(f"{tag}: not in {args.run_dir}, skipped")
            continue
        image = events.Images(tag)[args.epoch]
        path = out / f"{tag.replace('/', '_')}.png"
        path.write_bytes(image.encoded_image_string)
        print(f"{path}: {tag} at step {image.step}, {image.width}x{image.height}, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
