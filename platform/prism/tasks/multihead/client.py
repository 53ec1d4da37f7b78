"""Python client with the circle tool's API: ``classify_circles`` locally or against a Serve endpoint.

::

    from prism.tasks.multihead.client import classify_circles

    df = classify_circles("images/")                                        # local, models:/circles@champion
    df = classify_circles(["a.png", "b.png"], model="runs:/<id>/model", use_tta=False)
    res = classify_circles("images/", endpoint="http://127.0.0.1:8000", output_format="json")
    classify_circles("images/", endpoint="http://127.0.0.1:8000", output_path="preds.csv", silent=True)

Both paths give the same results: locally the :class:`~prism.inference.predictor.Predictor` runs in this process;
with ``endpoint`` the images are posted as multipart files to ``POST {endpoint}/predict`` (see
``prism.serve``), whose replicas run the same predictor. Result names are the paths as given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

__all__ = ["DEFAULT_MODEL", "classify_circles", "results_frame"]

DEFAULT_MODEL = "models:/circles@champion"
OUTPUT_FORMATS = ("dataframe", "json")
Results = list[dict[str, Any]]


def results_frame(results: Results) -> pd.DataFrame:
    """Classification results → one row per image: ``image``, ``<head>``, ``<head>_prob_<class>``.

    The columns of ``prism predict --out x.csv``; heads and classes keep the order of the results.
    """
    rows = []
    for r in results:
        row: dict[str, Any] = {"image": r.get("image")}
        for head, value in r.items():
            if isinstance(value, dict) and "prediction" in value:
                row[head] = value["prediction"]
                for cls, p in (value.get("probabilities") or {}).items():
                    row[f"{head}_prob_{cls}"] = p
        rows.append(row)
    return pd.DataFrame(rows)


def _chunks(paths: list[Path], size: int, silent: bool) -> Iterator[list[Path]]:
    from tqdm.auto import tqdm

    with tqdm(total=len(paths), unit="img", desc="classify", disable=silent) as bar:
        for start in range(0, len(paths), size):
            chunk = paths[start:start + size]
            yield chunk
            bar.update(len(chunk))


def _local(model: str, device: str | None, use_tta: bool, batch_size: int) -> Callable[[list[Path]], Results]:
    from prism.inference.predictor import load_predictor

    predictor = load_predictor(model, device=device)
    return lambda chunk: predictor.predict([str(p) for p in chunk], tta=use_tta, batch_size=batch_size)


def _remote(endpoint: str, model: str | None, use_tta: bool, batch_size: int,
            timeout_s: float) -> Callable[[list[Path]], Results]:
    """Posts chunks as multipart requests of at most ``batch_size`` and the endpoint's ``max_images_per_request``
    (:class:`prism.serve.client.Client`: retries of lost replicas and 503s)."""
    from prism.serve.client import Client

    client = Client(endpoint, timeout_s=timeout_s)
    served = client.models()
    if model is not None and model not in (served["uri"], served["resolved_uri"]):
        raise ValueError(
            f"{client.base} serves {served['uri']} ({served['resolved_uri']}), not {model!r}; pass model=None to use "
            f"the endpoint's model, or drop endpoint= to run {model!r} locally"
        )

    per_request = min(batch_size, int(client.settings()["max_images_per_request"]))

    def post(part: list[Path]) -> Results:
        results = client.predict(part, tta=use_tta)
        return [{**r, "image": str(p)} for p, r in zip(part, results, strict=True)]

    def predict(chunk: list[Path]) -> Results:
        return [r for start in range(0, len(chunk), per_request) for r in post(chunk[start:start + per_request])]

    return predict


def _write(path: Path, results: Results, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(results, indent=2))


def classify_circles(
    images: str | Path | Sequence[str | Path],
    model: str | Path | None = None,
    output_format: Literal["dataframe", "json"] = "dataframe",
    output_path: str | Path | None = None,
    use_tta: bool = True,
    device: str | None = None,
    endpoint: str | None = None,
    silent: bool = False,
    batch_size: int = 16,
    timeout_s: float = 120.0,
) -> pd.DataFrame | Results:
    """Classify circle images with a registered model, locally or through a Serve endpoint.

    Args:
        images: an image file, a folder (searched recursively for image files) or a list of either.
        model: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/…`` or a bundle folder. Locally the
            default is ``models:/circles@champion``; with ``endpoint`` the endpoint's model is used and a
            given ``model`` must be the one it serves.
        output_format: ``"dataframe"`` (one row per image, the ``prism predict`` CSV columns) or ``"json"``
            (the list ``[{"image", <head>: {"prediction", "probabilities"}}]``).
        output_path: also write the results there, ``.csv`` (the frame) or ``.json`` (the list).
        use_tta: average over the task's test-time augmentation views.
        device: ``cpu``, ``cuda``, … for local inference (default: cuda if available); not with ``endpoint``.
        endpoint: base URL of a ``prism serve`` app, e.g. ``http://127.0.0.1:8000``; None = local.
        silent: no progress bar.
        batch_size: images per forward pass locally; per request with ``endpoint`` (capped at the
            endpoint's ``max_images_per_request``, read from ``GET {endpoint}/settings``).
        timeout_s: HTTP timeout per request.

    Returns:
        A ``DataFrame`` or the list of result dicts, in the order of the expanded image paths.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    out = None if output_path is None else Path(output_path)
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"output_path must end in .csv or .json, got {str(out)!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from prism.inference.predictor import expand_image_paths  # imports torch: on first call, not on import

    paths = expand_image_paths([images] if isinstance(images, (str, Path)) else list(images))
    if endpoint is None:
        predict = _local(str(model or DEFAULT_MODEL), device, use_tta, batch_size)
    else:
        if device is not None:
            raise ValueError(f"device={device!r} applies to local inference; the replicas of {endpoint} "
                             "choose their own device (Serve config: args.device, ray_actor_options)")
        predict = _remote(endpoint, None if model is None else str(model), use_tta, batch_size, timeout_s)
    results: Results = []
    for chunk in _chunks(paths, batch_size, silent):
        results.extend(predict(chunk))
    frame = results_frame(results)
    if out is not None:
        _write(out, results, frame)
    return frame if output_format == "dataframe" else results
