"""``prism data synth | shards | quickdraw | coco``: synthetic data sets, WebDataset shards, COCO 2017."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_data_parser", "class_names"]


def _cmd_synth(args) -> int:
    from prism.data.synth import SYNTH_GENERATORS

    options = {}
    if args.classes:
        if args.generator != "sketches":
            raise SystemExit("--classes is for the sketches generator (circles has its own labels)")
        options["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    out = SYNTH_GENERATORS[args.generator](args.out, n=args.n, size=args.size, seed=args.seed,
                                           overwrite=args.overwrite, **options)
    print(f"[prism] wrote {args.n} images and their labels to {out}")
    return 0


def class_names(value: str) -> list[str]:
    """A class-list file (one name per line) or comma-separated names."""
    from prism.tasks.classify.config import read_class_list

    path = Path(value)
    return read_class_list(path) if path.is_file() else [c.strip() for c in value.split(",") if c.strip()]


def _cmd_shards(args) -> int:
    from prism.data.shards import table_to_shards

    out = table_to_shards(args.labels, args.out, class_names(args.classes), label_column=args.label_column,
                          image_column=args.image_column, image_root=args.root, prefix=args.prefix,
                          per_shard=args.per_shard, on_bad_rows=args.on_bad_rows)
    print(f"[prism] wrote {out.samples} samples in {len(out.shards)} shard(s): {out.pattern}\n"
          f"[prism] use: data.source=webdataset data.webdataset.train='{out.pattern}' "
          f"task.classes_file={Path(args.out) / 'classes.txt'}")
    return 0


def _cmd_quickdraw(args) -> int:
    from prism.data.shards import quickdraw_to_shards

    written = quickdraw_to_shards(args.ndjson, args.out, class_names(args.classes),
                                  class_names(args.held_out) if args.held_out else [], per_class=args.per_class,
                                  test_fraction=args.test_fraction, size=args.size, per_shard=args.per_shard,
                                  seed=args.seed)
    for split, shards in written.items():
        print(f"[prism] {split}: {shards.samples} drawings in {len(shards.shards)} shard(s): {shards.pattern}")
    return 0


def _cmd_coco(args) -> int:
    from prism.data.coco_download import fetch_coco

    try:
        overrides = fetch_coco(args.out, args.splits, base_url=args.base_url, archives_dir=args.archives,
                               keep_archives=args.keep_archives)
    except (ValueError, ConnectionError) as e:
        print(f"prism: error: {e}", file=sys.stderr)
        return 2
    print(f"[prism] COCO 2017 {', '.join(args.splits)} ready in {args.out}")
    if overrides:
        print("[prism] use: " + " ".join(f"{k}={v}" for k, v in overrides.items()))
    if "test" in args.splits:
        out = args.out.resolve()
        print(f"[prism] test-dev: images {out / 'test2017'}, image list "
              f"{out / 'annotations/image_info_test-dev2017.json'} (no boxes: predictions only)")
    return 0


COCO_DESCRIPTION = """\
Download the official COCO 2017 archives of --splits, check each against its published MD5 and
extract it into --out:

  OUT/train2017/  OUT/val2017/  OUT/test2017/  OUT/annotations/instances_{train,val}2017.json

then print the data.coco.* overrides (train, train_images, val, val_images) that point a detection
job at them. An archive needs about twice its size free until it is extracted; the .zip is then
deleted unless --keep-archives.
"""

COCO_EPILOG = """\
examples:
  prism data coco --out data/coco                      train + val images and annotations (19 GiB)
  prism data coco --out data/coco --splits val annotations    val2017 only (1 GiB): a quick start
  prism data coco --out data/coco --splits test        test-dev images + image_info_test-dev2017.json
  prism data coco --out data/coco --archives ~/coco-zips    archives downloaded by hand

Run the same command again after an interruption: a download resumes where it stopped (OUT/*.part),
and archives already verified (OUT/<archive>.verified) are skipped. Without internet access, fetch
the archives on another machine from
  http://images.cocodataset.org/zips/         train2017.zip  val2017.zip  test2017.zip
  http://images.cocodataset.org/annotations/  annotations_trainval2017.zip  image_info_test2017.zip
copy them into one folder and pass it as --archives: they are checked and extracted the same way.
"""


def add_data_parser(sub) -> None:
    """The ``data`` command and its sub-commands, on ``prism``'s sub-parsers ``sub``."""
    from prism.data.synth import SYNTH_GENERATORS

    p = sub.add_parser("data", help="data utilities")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="generate a synthetic labelled dataset")
    s.add_argument("generator", choices=sorted(SYNTH_GENERATORS))
    s.add_argument("--n", type=int, default=600, help="number of images")
    s.add_argument("--out", type=Path, required=True, help="output folder (images/ + labels.csv)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--classes", default=None, help="sketches: comma-separated class names (default: ten "
                   "QuickDraw names); any name gets a template of its own")
    s.set_defaults(fn=_cmd_synth)

    s = dsub.add_parser("shards", help="an image folder + labels CSV → WebDataset tar shards (classify)",
                        description="Copy the images of a labels CSV (checked as training checks it) into tar "
                        "shards of --per-shard samples: <key>.<ext> (the image bytes), <key>.cls (class index) "
                        "and <key>.txt (class name), plus classes.txt. Read them with data.source=webdataset.")
    s.add_argument("labels", type=Path, help="labels CSV (image column + label column)")
    s.add_argument("--out", type=Path, required=True, help="output folder of the shards")
    s.add_argument("--classes", required=True, help="class-list file (one name per line) or comma-separated names")
    s.add_argument("--root", type=Path, default=None, help="folder the CSV's relative image paths are under")
    s.add_argument("--label-column", default="label")
    s.add_argument("--image-column", default="image")
    s.add_argument("--prefix", default="train", help="shard names: PREFIX-000000.tar, …")
    s.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    s.add_argument("--on-bad-rows", choices=["error", "skip"], default="error")
    s.set_defaults(fn=_cmd_shards)

    s = dsub.add_parser("quickdraw", help="QuickDraw .ndjson drawings → rendered train/test/heldout shards",
                        description="Render QuickDraw simplified drawings (<class>.ndjson or "
                        "full_simplified_<class>.ndjson per class) to PNG and write train-*, test-* and, for "
                        "--held-out classes, heldout-* shards, with classes.txt and heldout_classes.txt.")
    s.add_argument("ndjson", type=Path, help="folder of the .ndjson files")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--classes", required=True, help="seen classes: a class-list file or comma-separated names")
    s.add_argument("--held-out", default=None, help="held-out classes (zero-shot evaluation), same forms")
    s.add_argument("--per-class", type=int, default=1000, help="drawings read per class")
    s.add_argument("--test-fraction", type=float, default=0.1, help="share of each seen class in test-*")
    s.add_argument("--size", type=int, default=128, help="rendered side in pixels")
    s.add_argument("--per-shard", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_quickdraw)

    from prism.data.coco_download import BASE_URL, SPLITS

    s = dsub.add_parser("coco", help="download, check (MD5) and extract the official COCO 2017 archives",
                        description=COCO_DESCRIPTION, epilog=COCO_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--out", type=Path, required=True, help="folder the archives are extracted into")
    s.add_argument("--splits", nargs="+", choices=list(SPLITS), default=["train", "val", "annotations"],
                   metavar="SPLIT", help="any of: train (train2017.zip, 18 GiB), val (val2017.zip, 0.76 GiB), "
                   "test (test2017.zip, 6.2 GiB, and image_info_test2017.zip), annotations "
                   "(annotations_trainval2017.zip, 0.24 GiB: instances_train2017.json, instances_val2017.json); "
                   "default: train val annotations")
    s.add_argument("--archives", type=Path, default=None, metavar="DIR",
                   help="take the archives from DIR (downloaded by hand) instead of the network; they are "
                   "checked the same way and left in place")
    s.add_argument("--base-url", default=BASE_URL, metavar="URL",
                   help="where zips/ and annotations/ are served (a mirror); default: %(default)s")
    s.add_argument("--keep-archives", action="store_true",
                   help="keep downloaded .zip files after extraction (default: delete them once extracted)")
    s.set_defaults(fn=_cmd_coco)
