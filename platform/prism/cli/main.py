"""``prism`` command line: a thin launcher over the library (parse, load config, call, exit)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from prism.config.schema import ConfigError
from prism.serve.ingress import INGRESS_KINDS

__all__ = ["main"]

EPILOG = """examples:
  prism train jobs/circles.yaml                         train on embedded defaults (local Ray, SQLite MLflow)
  prism train jobs/circles.yaml train.num_workers=2 stages.1.epochs=10
  ray job submit --working-dir . -- prism train jobs/circles.yaml
  prism config jobs/circles.yaml lora.rank=16           print the resolved config
  prism tune jobs/circles.yaml --space tune_spaces/lora.yaml    search LoRA rank / LR / stage plans
  prism predict --model models:/circles@champion images/ --out preds.csv
  prism evaluate --model models:/circles@champion --labels data/labels.csv
  prism evaluate --model models:/shapes-detect@champion --coco instances_val2017.json --images val2017/
  prism evaluate --model models:/shapes-textseg@champion --voc VOC2012/ --split val --threshold 0.4
  prism train jobs/shapes_detect.yaml --eval-only          score the job's registered model on its validation split
  prism data synth circles --n 600 --out data/circles
  prism serve serve_configs/circles.yaml --port 8000    HTTP API on Ray Serve (OpenAPI docs at /docs)
  prism export --model models:/circles@champion --out exported/   LoRA merged, plain safetensors
  prism export sam-embeddings photos/ --weights sam_vit_b_01ec64.pth --out emb/   SAM image embeddings
  prism features pca jobs/faces_pca.yaml                PCA of patch features over a collection (no training)
  prism backbones                                       list registered backbones
"""


NO_TABLE_EVALUATION = {
    "features": "a features model has no labels to score; its fit is in pca.json and the MLflow run "
                "(explained variance per component)",
}
"""Tasks whose models ``prism evaluate`` cannot score on a labels table, and what to use instead."""


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", type=Path, help="job spec YAML (see jobs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.num_workers=2 stages.0.lr.head=1e-3 lora=null")


def _cmd_config(args) -> int:
    from prism.config import dump_config, load_config

    print(dump_config(load_config(args.job, args.overrides)), end="")
    return 0


def _cmd_train(args) -> int:
    from prism.config import load_config
    from prism.engine.driver import run_training

    cfg = load_config(args.job, args.overrides)
    if not type(cfg.task).trains:
        raise ConfigError(f"task '{cfg.task.name}' does not train; run `prism features pca {args.job}`")
    if args.eval_only:
        return _eval_only(cfg, args)
    if args.model is not None:
        raise ConfigError("--model goes with --eval-only (to train from a checkpoint, set train.resume_from)")
    run_training(cfg, job_file=str(args.job))
    return 0


def _eval_only(cfg, args) -> int:
    """``prism train JOB --eval-only``: no training; the job's model (``--model``, else ``train.resume_from``,
    else ``models:/<tracking.model_name>@<tracking.alias>``) scored on the job's validation split."""
    from prism.inference.predictor import load_predictor
    from prism.tracking import configure_tracking

    source = args.model or (str(cfg.train.resume_from) if cfg.train.resume_from is not None else None)
    if source is None:
        if not cfg.tracking.model_name:
            raise ConfigError("--eval-only needs a model: --model, train.resume_from or tracking.model_name")
        source = f"models:/{cfg.tracking.model_name}@{cfg.tracking.alias}"
    configure_tracking(cfg.tracking.tracking_uri)
    pred = load_predictor(source, device=args.device)
    if pred.task.name != cfg.task.name:
        raise ConfigError(f"{source} is a {pred.task.name!r} model; the job trains {cfg.task.name!r}")
    pred.cfg = pred.cfg.model_copy(update={"data": cfg.data})  # the job's data, e.g. with val_subset lifted
    return _run_evaluation(pred, argparse.Namespace(
        labels=None, root=None, on_bad_rows=None, coco=None, images=None, first=None, samples=args.samples,
        voc=None, split="val", list_file=None, threshold=None, no_tta=False, batch_size=args.batch_size, out=args.out, log_run=args.log_run), source,
        cfg.tracking.tracking_uri)


def _cmd_tune(args) -> int:
    from prism.tune import run_sweep

    run_sweep(args.job, args.space, args.overrides)
    return 0


def _write_results(pred, results, out: Path | None, fmt: str) -> None:
    from prism.tasks.outputs import encode_result, write_binary_outputs

    results = encode_result(results) if out is None else write_binary_outputs(results, out.with_suffix(""))
    frame = pred.to_dataframe(results)
    if out is None:
        if fmt == "json":
            print(json.dumps(results, indent=2))
        else:
            print(frame.to_string(index=False))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("json", "both"):
        path = out.with_suffix(".json")
        path.write_text(json.dumps(results, indent=2))
        print(f"[prism] wrote {path}")
    if fmt in ("csv", "both"):
        path = out.with_suffix(".csv")
        frame.to_csv(path, index=False)
        print(f"[prism] wrote {path}")


def _parse_options(items: list[str]) -> dict:
    """``key=value`` pairs (values parsed as YAML) → a dict of request options."""
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r} must look like key=value (e.g. top_k=3)")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _cmd_predict(args) -> int:
    from pydantic import ValidationError

    from prism.inference.predictor import expand_image_paths, load_predictor

    pred = load_predictor(args.model, device=args.device)
    try:
        options = pred.options(_parse_options(args.option), tta=False if args.no_tta else None)
    except ValidationError as exc:
        accepted = ", ".join(sorted(pred.task.options_class.model_fields))
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"--option: {problems}; task '{pred.task.name}' accepts: {accepted}") from None
    paths = expand_image_paths(args.images)
    try:  # the task's checks of an image and its options (a missing prompt, an undecodable file) name the input
        results = pred.predict([str(p) for p in paths], batch_size=args.batch_size, options=options,
                               progress=len(paths) > args.batch_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    fmt = args.format or ("json" if args.out is not None and args.out.suffix == ".json" else "csv")
    _write_results(pred, results, args.out, fmt)
    return 0


def _cmd_evaluate(args) -> int:
    from prism.inference.predictor import load_predictor

    if args.labels is None and args.coco is None and (args.root is not None or args.on_bad_rows is not None):
        print("prism: error: --root and --on-bad-rows need --labels (or --coco; without them the validation split "
              "is read as training read it, by the model config's data.*)", file=sys.stderr)
        return 2
    if args.zero_shot is not None:
        return _evaluate_zero_shot(args)
    if args.shards or args.classes or args.save_bundle:
        print("prism: error: --shards, --classes and --save-bundle are options of --zero-shot", file=sys.stderr)
        return 2
    if str(args.model).startswith(("models:/", "runs:/")):
        from prism.tracking import configure_tracking

        configure_tracking()
    pred = load_predictor(args.model, device=args.device)
    return _run_evaluation(pred, args, str(args.model))


def _run_evaluation(pred, args, model: str, tracking_uri: str | None = None) -> int:
    """Score ``pred`` (a table, the validation split or a COCO file), write the report, log it to MLflow."""
    from prism.inference.evaluate import evaluate

    task = pred.task.name
    if task in NO_TABLE_EVALUATION:
        raise ConfigError(NO_TABLE_EVALUATION[task])
    if task == "detection":
        from prism.tasks.detection.evaluation import select_coco_rows, write_detection_outputs

        if args.labels is not None or args.root is not None:
            raise ConfigError("a detection model is scored on COCO files: --coco instances.json [--images DIR] "
                              "(without --coco: its validation split)")
        try:
            rows = select_coco_rows(pred, args.coco, args.images, args.first, args.on_bad_rows)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        report = evaluate(pred, rows=rows, tta=not args.no_tta, batch_size=args.batch_size)
    elif task == "segment":
        from prism.tasks.segment.evaluation import select_voc_rows

        if args.labels is not None or args.root is not None or args.coco is not None:
            raise ConfigError("a segmentation model is scored on a VOC folder: --voc DIR [--split NAME | --list "
                              "FILE] (without --voc: its validation split)")
        try:
            seg_rows = select_voc_rows(pred, args.voc, args.split, args.list_file, args.first, args.threshold)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        report = evaluate(pred, rows=seg_rows, tta=not args.no_tta, batch_size=args.batch_size)
    else:
        if args.coco is not None or args.images is not None or args.first is not None:
            raise ConfigError(f"--coco, --images and --first are for detection models; this is a {task!r} model")
        if args.voc is not None or args.list_file is not None or args.threshold is not None:
            raise ConfigError(f"--voc, --list and --threshold are for segmentation models; this is a {task!r} model")
        report = evaluate(pred, args.labels, tta=not args.no_tta, batch_size=args.batch_size,
                          on_bad_rows=args.on_bad_rows, image_root=args.root)
    print(f"[prism] scored {report.describe()}")
    for k, v in sorted(report.metrics.items()):
        if "/precision/" not in k and "/recall/" not in k:
            print(f"{k:40s} {v:.4f}")
    written = report.save(args.out, pred.task)
    if task == "detection":
        written += write_detection_outputs(report, args.out, samples=args.samples)
    if task == "segment":
        from prism.tasks.segment.evaluation import write_segment_outputs

        written += write_segment_outputs(report, pred, seg_rows, args.out, args.samples, args.threshold)
    written.append(report.write_summary(args.out, model, written))
    print(f"[prism] {report.n_images} images ({report.skipped} skipped); wrote {args.out}/: "
          f"{', '.join(sorted({str(p.relative_to(args.out).parts[0]) for p in written}))}")
    log_run = args.log_run if args.log_run is not None else model.startswith(("models:/", "runs:/"))
    if log_run:
        from prism.tracking.evaluation import log_evaluation

        run_id = log_evaluation(args.out, report.metrics, model, pred.cfg.tracking.experiment, report.scored,
                                tracking_uri)
        print(f"[prism] logged the evaluation as MLflow run {run_id} (experiment {pred.cfg.tracking.experiment!r})")
    return 0


def _evaluate_zero_shot(args) -> int:
    from prism.inference.bundle import rewrite_task_files, stage_bundle
    from prism.inference.predictor import load_predictor
    from prism.inference.zeroshot import evaluate_zero_shot, read_held_out_csv, read_held_out_shards

    if args.classes is None or (args.labels is None) == (not args.shards):
        print("prism: error: --zero-shot needs --classes (the held-out class list) and the held-out images: "
              "--shards PATTERN or --labels CSV (one of them)", file=sys.stderr)
        return 2
    from prism.cli.data import class_names

    classes = class_names(args.classes)
    pred = load_predictor(args.model, device=args.device)
    if pred.task.name != "classify":
        raise ConfigError(f"--zero-shot is for classify models; this one is a {pred.task.name!r} model")
    samples = (read_held_out_shards(args.shards, classes) if args.shards else
               read_held_out_csv(args.labels, classes, image_root=args.root))
    report = evaluate_zero_shot(pred, samples, classes, args.zero_shot, shots=args.shots, seed=args.seed,
                                tta=not args.no_tta, batch_size=args.batch_size)
    print(f"[prism] {report.describe()}")
    for k, v in sorted(report.metrics.items()):
        print(f"{k:40s} {v:.4f}")
    written = report.save(args.out, pred)
    print(f"[prism] wrote {', '.join(map(str, written))}")
    if args.save_bundle is not None:
        from prism.tracking import resolve_model_uri

        stage_bundle(resolve_model_uri(str(args.model)), args.save_bundle)
        pred.task.bank = report.bank
        rewrite_task_files(args.save_bundle, pred.task, pred.model)
        print(f"[prism] wrote the model with its {len(classes)} zero-shot classes to {args.save_bundle}: predict "
              "or serve it with the option zero_shot=true")
    return 0


def _cmd_export(args) -> int:
    from prism.inference.export import export_merged

    if args.model is None or args.out is None:
        raise ConfigError("prism export needs --model and --out (or: prism export sam-embeddings SOURCE --out DIR)")
    out = export_merged(args.model, args.out)
    print(f"[prism] merged LoRA and wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    return 0


def _cmd_sam_embeddings(args) -> int:
    from prism.inference.sam_embeddings import export_sam_embeddings

    if args.weights is None:
        print("[prism] no --weights: a randomly initialised encoder (its embeddings mean nothing)", file=sys.stderr)
    try:
        report = export_sam_embeddings(args.source, args.out, args.backbone, args.weights, args.img_size, args.format,
                                       recursive=not args.no_recursive, batch_size=args.batch_size,
                                       overwrite=args.overwrite)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"[prism] wrote {report.n_images} embeddings to {report.out} (index: {report.index})")
    return 0


def _cmd_dual_circle(args) -> int:
    from prism.tasks.segment.dual_circle import evaluate_folder, predict_masks

    masks = args.masks
    try:
        if args.model is not None:
            if args.images is None or not args.prompt or masks is not None:
                raise ConfigError("with --model give --images and --prompt (the masks are predicted), not --masks")
            from prism.inference.predictor import load_predictor

            pred = load_predictor(args.model, device=args.device)
            if pred.task.name != "segment":
                raise ConfigError(f"{args.model} is a {pred.task.name!r} model; dual-circle scores segmenters")
            masks = predict_masks(pred, args.images, args.prompt, args.out / "masks", args.threshold)
        elif masks is None:
            raise ConfigError("give --masks DIR (predicted masks), or --model, --images and --prompt")
        report = evaluate_folder(args.circles, masks, args.out, args.images, visualise=args.visualise)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    m = report["metrics"]
    print(f"[prism] dual-circle: {report['images']} images ({len(report['missing_masks'])} annotated without a mask)")
    for k in ("iou", "precision", "recall", "f1", "image/iou"):
        print(f"{k:20s} {m[k]:.4f}")
    print(f"[prism] wrote {args.out}/: metrics.json, per_image.csv, visualisations/")
    return 0


def _cmd_serve(args) -> int:
    from prism.serve import run_local

    run_local(args.config, model_uri=args.model, tracking_uri=args.tracking_uri, host=args.host, port=args.port,
              ingress=args.ingress)
    return 0


def _cmd_backbones(args) -> int:
    from prism.backbones import list_backbones

    print("\n".join(list_backbones()))
    return 0


def _cmd_demo(args) -> int:
    if args.which == "sketches":
        from prism.cli.demo_sketches import run_sketches_demo

        run_sketches_demo(workdir=args.workdir, overrides=args.overrides, serve_port=args.port)
    else:
        from prism.cli.demo import run_demo

        run_demo(workdir=args.workdir, overrides=args.overrides, serve_port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism", description="Adapt and serve vision foundation models with LoRA, on Ray.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and Ray Train's / Ray Data's INFO lines on the console (else they "
                        "go to Ray's log files only)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a job spec on Ray Train, log to MLflow, register the model")
    _add_job_args(p)
    e = p.add_argument_group("evaluation only (no training)")
    e.add_argument("--eval-only", action="store_true",
                   help="score the job's model on the job's validation split instead of training: --model, else "
                   "train.resume_from (a checkpoint folder), else models:/<tracking.model_name>@<tracking.alias>")
    e.add_argument("--model", default=None, help="with --eval-only: the model (registry URI, checkpoint or bundle)")
    e.add_argument("--out", type=Path, default=Path("prism_eval"), help="with --eval-only: the report folder")
    e.add_argument("--device", default=None, help="with --eval-only: cpu, cuda, …")
    e.add_argument("--batch-size", type=int, default=32, help="with --eval-only: images per batch")
    e.add_argument("--samples", type=int, default=8, help="with --eval-only (detection): images drawn with boxes")
    e.add_argument("--log-run", action=argparse.BooleanOptionalAction, default=True,
                   help="with --eval-only: log the evaluation as an MLflow run (default: yes)")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("tune", help="Ray Tune sweep over config keys (ASHA); best trial registered as @candidate")
    _add_job_args(p)
    p.add_argument("--space", type=Path, required=True, help="search space YAML (see tune_spaces/)")
    p.set_defaults(fn=_cmd_tune)

    p = sub.add_parser("config", help="print the resolved config of a job spec with overrides")
    _add_job_args(p)
    p.set_defaults(fn=_cmd_config)

    def model_args(p):
        p.add_argument("--model", required=True,
                       help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a bundle folder")
        p.add_argument("--no-tta", action="store_true", help="no test-time augmentation")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
        p.add_argument("--batch-size", type=int, default=32)

    p = sub.add_parser("predict", help="predict images (files or folders) → CSV / JSON")
    model_args(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (.csv or .json); default: stdout. Binary outputs (masks, renders) are written "
                   "as files into a folder named like it without the suffix, and the table holds their paths")
    p.add_argument("--format", choices=["csv", "json", "both"], default=None)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a request option of the model's task, repeatable (e.g. --option top_k=3 for a "
                   "classifier); the same options Serve's POST /predict takes")
    p.set_defaults(fn=_cmd_predict)

    p = sub.add_parser("evaluate", help="metrics, figures and a report of a model on labelled images",
                       description="Score a model on labelled images: a labels table (classifiers) or a COCO file "
                       "(detectors). Without --labels / --coco: the held-out validation split of the model's "
                       "training data (its config's data.*, split as training split it), never a training row. "
                       "Writes metrics.json, figures, per-class tables and report.md to --out, and logs them as "
                       "an MLflow run in the model's experiment (default for registry models).")
    model_args(p)
    p.add_argument("--labels", type=Path, default=None,
                   help="labels CSV, every row scored (default: the validation split of the model's training data)")
    p.add_argument("--root", type=Path, default=None,
                   help="with --labels: folder the CSV's relative image paths are under (default: the CSV's folder)")
    p.add_argument("--out", type=Path, default=Path("prism_eval"), help="folder for metrics.json and plots")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default=None,
                   help="with --labels or --coco: stop on bad rows / boxes (default) or skip and count them")
    p.add_argument("--log-run", action=argparse.BooleanOptionalAction, default=None,
                   help="log the evaluation (metrics and every file written) as an MLflow run in the model's "
                   "experiment (default: yes for models:/ and runs:/ URIs, no for folders)")
    d = p.add_argument_group("detection models (COCO AP)")
    d.add_argument("--coco", type=Path, default=None,
                   help="an instances_*.json to score every image of (default: the model's validation split); one "
                   "without annotations (test-dev's image_info_*.json) writes detections.json only")
    d.add_argument("--images", type=Path, default=None, help="with --coco: its image folder (default: the JSON's)")
    d.add_argument("--first", type=int, default=None, help="score the first N images only (a 'mini' evaluation)")
    d.add_argument("--samples", type=int, default=8,
                   help="images drawn with their ground truth and detections into samples/ (default 8)")
    g = p.add_argument_group("segmentation models (IoU, Dice, … per image and pooled)")
    g.add_argument("--voc", type=Path, default=None,
                   help="a VOC folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/) whose masks are "
                   "prompted by the model's classes (default: the model's validation split)")
    g.add_argument("--split", default="val", help="with --voc: ImageSets/Segmentation/<split>.txt (default val; all: every image)")
    g.add_argument("--list", dest="list_file", type=Path, default=None, help="with --voc: a list file of image ids")
    g.add_argument("--threshold", type=float, default=None,
                   help="mask probability threshold (default: the model's task.threshold); --first and --samples "
                   "(predicted masks and overlays into masks/ and overlays/) apply too")
    z = p.add_argument_group("zero-shot on held-out classes (classify models)")
    z.add_argument("--zero-shot", choices=["text", "prototypes"], default=None,
                   help="text: CLIP text embeddings of the class names (CLIP backbones); prototypes: SHOTS support "
                   "images per class, the rest scored by nearest prototype (any backbone)")
    z.add_argument("--classes", default=None, help="the held-out classes: a class-list file or comma-separated names")
    z.add_argument("--shards", action="append", default=[], metavar="PATTERN",
                   help="held-out WebDataset shards (brace patterns, s3:// …), e.g. from `prism data quickdraw`; "
                   "or give --labels")
    z.add_argument("--shots", type=int, default=5, help="prototypes: support images per class (default 5)")
    z.add_argument("--seed", type=int, default=0, help="prototypes: seed of the support choice")
    z.add_argument("--save-bundle", type=Path, default=None,
                   help="also write a copy of the model with these zero-shot classes (prototypes or text "
                   "embeddings), served with the option zero_shot=true")
    p.set_defaults(fn=_cmd_evaluate)

    from prism.cli.data import add_data_parser

    add_data_parser(sub)

    from prism.cli.features import add_features_parser

    add_features_parser(sub)

    p = sub.add_parser("export", help="merge LoRA into the backbone and write plain safetensors weights; "
                       "`export sam-embeddings`: SAM's image embedding of every image of a folder",
                       epilog="examples:\n  prism export --model models:/circles@champion --out exported/\n"
                       "  prism export sam-embeddings photos/ --weights sam_vit_b_01ec64.pth --out embeddings/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder")
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.set_defaults(fn=_cmd_export)
    es = p.add_subparsers(dest="export_command", metavar="WHAT")
    e = es.add_parser("sam-embeddings", help="SAM's image embedding of every image, one file per image",
                      description="SAM's image embedding ((256, 64, 64) at 1024 px) of every image under a folder "
                      "(recursive) or named by a list file, through Ray Data; one file per image with its stem, "
                      "the source's folders mirrored, and index.csv (original and resized sizes).")
    e.add_argument("source", type=Path, help="a folder of images or a list file (one path per line)")
    e.add_argument("--out", type=Path, required=True, help="output folder")
    e.add_argument("--backbone", default="sam_vit_b", help="sam_vit_b (default), sam_vit_l, sam_vit_h")
    e.add_argument("--weights", type=Path, default=None,
                   help="an official SAM checkpoint (its image_encoder.* keys), e.g. sam_vit_b_01ec64.pth")
    e.add_argument("--img-size", type=int, default=1024, help="the encoder's input side (default SAM's 1024)")
    e.add_argument("--format", choices=["safetensors", "npy", "pt"], default="safetensors",
                   help="file format (default safetensors; pt on request)")
    e.add_argument("--no-recursive", action="store_true", help="only the folder's own images")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--overwrite", action="store_true", help="replace existing output files")
    e.set_defaults(fn=_cmd_sam_embeddings)

    p = sub.add_parser("dual-circle", help="score masks against two-circle annotations (inner = object, "
                       "annulus ignored, beyond = background)",
                       description="Dual-circle evaluation (prism.tasks.segment.dual_circle): predicted pixels "
                       "inside an inner circle are true positives, beyond every outer circle false positives, the "
                       "annulus and ignore rectangles are left out. Masks pair with annotations and images by stem "
                       "(<stem>-mask.png, <stem>.mask.png or <stem>.png; images <stem>-noCircles.* or <stem>.*). "
                       "Writes metrics.json (pooled and per-image means), per_image.csv and visualisations/.")
    p.add_argument("--circles", type=Path, required=True,
                   help='annotations JSON: {"<stem>": {"circles": [[cx, cy, r_inner, r_outer]], "ignore": '
                   '[[x0, y0, x1, y1]]}}')
    p.add_argument("--masks", type=Path, default=None, help="a folder of predicted masks (PNG, white = object)")
    p.add_argument("--images", type=Path, default=None, help="the images (drawn under the visualisations; with "
                   "--model: predicted)")
    p.add_argument("--model", default=None, help="a segmenter to predict the masks with (models:/… or a bundle)")
    p.add_argument("--prompt", default=None, help="with --model: what to segment")
    p.add_argument("--threshold", type=float, default=None, help="with --model: mask probability threshold")
    p.add_argument("--device", default=None, help="with --model: cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--visualise", type=int, default=8, help="images rendered into visualisations/ (default 8)")
    p.add_argument("--out", type=Path, default=Path("prism_dual_circle"), help="output folder")
    p.set_defaults(fn=_cmd_dual_circle)

    p = sub.add_parser("serve", help="serve a model over HTTP on Ray Serve (blocks; Ctrl-C stops it)")
    p.add_argument("config", type=Path, help="Serve config YAML, e.g. serve_configs/circles.yaml")
    p.add_argument("--model", default=None,
                   help="model to serve instead of the config's user_config.model_uri, e.g. models:/circles/3")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store of the model (default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--host", default=None, help="HTTP host (config default 127.0.0.1; 0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (config default 8000)")
    p.add_argument("--ingress", choices=INGRESS_KINDS, default="proxy",
                   help="how HTTP reaches the replicas: proxy = Serve's Python proxy (default); haproxy = HAProxy "
                   "in front of replicas that answer HTTP themselves: a fraction of the per-request overhead and "
                   "~2.5x the one-image throughput (needs the haproxy binary, e.g. apt-get install haproxy; "
                   "experimental in Ray Serve). See docs/architecture.md, \"Ingress\"")
    p.set_defaults(fn=_cmd_serve)

    p = sub.add_parser("backbones", help="list registered backbones")
    p.set_defaults(fn=_cmd_backbones)

    p = sub.add_parser("demo", help="synthetic data → 2-worker training → registry → Serve → HTTP predictions (embedded defaults)",
                       description="The whole path on embedded defaults (local Ray, SQLite MLflow in the working "
                       "folder, synthetic data), narrated. circles: the multi-head circle classifier "
                       "(jobs/circles.yaml). sketches: single-label classification of 10 sketch classes "
                       "(jobs/sketches.yaml), then two new classes added while serving from 5 drawings each "
                       "(POST /classes) and ranked by prototype, without retraining.")
    p.add_argument("which", nargs="?", choices=["circles", "sketches"], default="circles",
                   help="which demo (default: circles)")
    p.add_argument("--workdir", type=Path, default=Path("."), help="the project's root folder (jobs/, serve_configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the demo's job, after its name (e.g. prism demo sketches data.synthetic.n=400)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the Serve app (default 8000)")
    p.set_defaults(fn=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # PRISM_VERBOSE=1 in the environment does the same
        from prism.runtime.console import set_verbose

        set_verbose(True)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from prism.data.table import BadRowsError

    try:
        return int(args.fn(args) or 0)
    except (ConfigError, BadRowsError, FileNotFoundError) as e:
        print(f"prism: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
