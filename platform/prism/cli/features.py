"""``prism features pca | merge | render``: PCA of patch features over a collection, and its renders."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

__all__ = ["add_features_parser"]

EPILOG = """examples:
  prism features pca jobs/faces_pca.yaml                      fit on a collection, register the basis
  prism features pca jobs/faces_pca.yaml data.root=/data/faces task.components=32 backbone.img_size=518
  prism features merge jobs/faces_pca.yaml part1/partials/main-*.safetensors part2/partials/main-*.safetensors
  prism features render --model models:/faces-pca@champion clip.mp4 photos/ --out renders/
  prism features render --model prism_features/faces/bundle img.jpg --out renders/ --start 1 --n 1 --side-by-side
"""


def _summary(outcome, cfg) -> None:
    ev = outcome.basis.explained_variance_ratio
    t = outcome.meta["totals"]
    print(f"[prism] PCA of {t['patches']:,} patches from {t['images']:,} images"
          + "".join(f", {t[k]} {k}" for k in ("subjects", "clips", "videos") if k in t)
          + f": the first {len(ev)} components explain {float(ev.sum()):.1%} of the variance "
          f"({', '.join(f'{float(v):.1%}' for v in ev[:3])}, …)")
    if outcome.foreground is not None:
        print(f"[prism] foreground PCA of {outcome.foreground.count:,} patches")
    print(f"[prism] bundle: {outcome.bundle}")
    model = outcome.bundle
    if outcome.model_version:
        model = f"models:/{cfg.tracking.model_name}@{cfg.tracking.alias}"
        print(f"[prism] registered models:/{cfg.tracking.model_name}/{outcome.model_version}, alias "
              f"'{cfg.tracking.alias}' moved to it")
    print(f"[prism] render: prism features render --model {model} IMAGES_OR_VIDEOS… --out renders/")


def _user_errors(fn):
    """A command whose ValueErrors are about its input (a missing folder, a mismatched source model): the
    launcher prints them as errors (exit 2), not as tracebacks."""
    import functools

    @functools.wraps(fn)
    def run(args) -> int:
        from prism.config import ConfigError

        try:
            return fn(args)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    return run


def _require_features(cfg, job) -> None:
    from prism.config import ConfigError

    if cfg.task.name != "features":
        raise ConfigError(f"prism features runs features jobs; {job} is a '{cfg.task.name}' job (train it with "
                          "`prism train`)")


@_user_errors
def _cmd_pca(args) -> int:
    from prism.config import load_config
    from prism.tasks.features.run import PARTIALS, fit_pca, publish_features

    cfg = load_config(args.job, args.overrides)
    _require_features(cfg, args.job)
    if args.restart:
        shutil.rmtree(Path(cfg.task.output) / PARTIALS, ignore_errors=True)
    outcome = fit_pca(cfg, progress=not args.no_progress)
    _summary(publish_features(cfg, outcome, job_file=str(args.job)), cfg)
    return 0


@_user_errors
def _cmd_merge(args) -> int:
    from prism.config import load_config
    from prism.tasks.features.run import merge_partials, publish_features

    cfg = load_config(args.job, args.overrides)
    _require_features(cfg, args.job)
    outcome = merge_partials(cfg, args.stats)
    _summary(publish_features(cfg, outcome, job_file=str(args.job)), cfg)
    return 0


@_user_errors
def _cmd_render(args) -> int:
    from prism.inference.predictor import expand_image_paths, load_predictor
    from prism.tasks.features.media import VIDEO_EXTENSIONS, render_image_files, render_video

    pred = load_predictor(args.model, device=args.device)
    if pred.task.name != "features":
        raise SystemExit(f"prism features render needs a features model; {args.model} is a "
                         f"'{pred.task.name}' model")
    options = {k: v for k, v in {"start": args.start, "n": args.n, "sigmas": args.sigmas, "upsample": args.upsample,
                                 "side_by_side": args.side_by_side, "foreground": args.foreground,
                                 "size": "grid" if args.grid else "input",
                                 "outputs": ["png", "npy"] if args.npy else ["png"]}.items() if v is not None}
    videos = [Path(p) for p in args.inputs if Path(p).suffix.lower() in VIDEO_EXTENSIONS]
    images = expand_image_paths([p for p in args.inputs if Path(p).suffix.lower() not in VIDEO_EXTENSIONS])
    written = render_image_files(pred, images, args.out, options, args.batch_size) if images else []
    for v in videos:
        out = args.out / f"{v.stem}.pca.mp4"
        n = render_video(pred, v, out, {k: o for k, o in options.items() if k != "side_by_side"},
                         stride=args.stride, batch_size=args.batch_size)
        print(f"[prism] {v}: {n} frames → {out}")
        written.append(out)
    print(f"[prism] wrote {len(written)} file(s) to {args.out}")
    return 0


def add_features_parser(sub) -> None:
    """The ``features`` command and its sub-commands, on ``prism``'s sub-parsers ``sub``."""
    p = sub.add_parser("features", help="PCA of patch features over an image / video collection, and renders",
                       description="Patch features of a backbone over a whole collection, reduced exactly by "
                       "streaming covariance (every patch counts), their PCA registered as a model, and RGB "
                       "renders whose colours mean the same in every image and frame.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = p.add_subparsers(dest="features_command", required=True, metavar="FEATURES_COMMAND")

    s = fsub.add_parser("pca", help="extract patch features over a collection and fit their PCA",
                        description="Ray Data streams the collection (data.source images or video) through a pool "
                        "of backbone actors; each batch becomes float64 statistics that the driver sums, so memory "
                        "stays O(C²). Each finished chunk's statistics are saved under task.output/partials: a "
                        "rerun of a killed job continues after the last finished chunk.")
    s.add_argument("job", type=Path, help="features job spec YAML (e.g. jobs/faces_pca.yaml)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.root=/data")
    s.add_argument("--restart", action="store_true", help="drop saved chunk statistics and start over")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_pca)

    s = fsub.add_parser("merge", help="one PCA from the saved statistics of separate runs",
                        description="Merge main-pass statistics files (task.output/partials/main-*.safetensors of "
                        "runs over parts of a collection, same backbone, weights and img_size) into one PCA, exactly "
                        "as one run over all of it would have solved it, and register it like `pca`.")
    s.add_argument("job", type=Path, help="the features job spec the runs used")
    s.add_argument("stats", nargs="+", type=Path, help="statistics files to merge")
    s.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=_cmd_merge)

    s = fsub.add_parser("render", help="render PCA components of images (PNG) and videos (MP4)")
    s.add_argument("--model", required=True, help="a features model: models:/NAME@ALIAS, … or a bundle folder")
    s.add_argument("inputs", nargs="+", help="image files or folders, and video files (.mp4 .avi .mov .mkv .webm)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--start", type=int, default=None, help="first component shown (default: the job's render.start)")
    s.add_argument("--n", type=int, choices=[1, 2, 3], default=None, help="components shown: 1 grey, 3 RGB")
    s.add_argument("--sigmas", type=float, default=None, help="± standard deviations spanning the colour range")
    s.add_argument("--upsample", choices=["patch", "smooth"], default=None)
    s.add_argument("--grid", action="store_true", help="render at the patch grid's size, not the input's")
    s.add_argument("--side-by-side", action="store_true", default=None, help="images: the input left of the render "
                   "(videos always show both)")
    s.add_argument("--foreground", action="store_true", default=None, help="colour the foreground PCA")
    s.add_argument("--npy", action="store_true", help="also write the raw component maps (h, w, K) as .npy")
    s.add_argument("--stride", type=int, default=1, help="videos: render every n-th frame")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    s.set_defaults(fn=_cmd_render)
