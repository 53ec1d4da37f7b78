"""``prism data synth | shards | quickdraw``: synthetic data sets and WebDataset shards."""

from __future__ import annotations

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
