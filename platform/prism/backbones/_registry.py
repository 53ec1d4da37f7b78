"""Name -> builder registry and the `create_backbone` entry point.

A builder is a callable `builder(*, pretrained: bool, img_size: int | None, **overrides) -> Backbone`
registered with `@register_backbone("name")`. `create_backbone` adds what is common to every family:
argument checks, seeded random init, loading `weights` from a file and the `weights_sha256` stamp.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from os import PathLike

from prism.backbones.base import Backbone, seeded, state_dict_sha256
from prism.backbones.weights import load_weights

Builder = Callable[..., Backbone]

_BUILDERS: dict[str, Builder] = {}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name` (unique)."""

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"backbone {name!r} is already registered; pick another name")
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_backbones() -> list[str]:
    """Sorted names of every registered backbone."""
    return sorted(_BUILDERS)


def _lookup(name: str) -> Builder:
    try:
        return _BUILDERS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_BUILDERS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}.{hint} Registered backbones: {', '.join(list_backbones())}"
        ) from None


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | PathLike[str] | None = None,
    img_size: int | None = None,
    seed: int = 0,
    **overrides: object,
) -> Backbone:
    """Build the registered backbone `name`.

    Args:
        name: one of `list_backbones()`.
        pretrained: download the published weights through the library hub (timm / open_clip).
        weights: path of a local .safetensors / .pth / .pt checkpoint, in the library's own key format or
            the original release format (see `prism.backbones.weights`); loaded strictly.
        img_size: square input size, a multiple of the patch size; None takes the backbone default.
            Position embeddings of weights made for another size are resampled.
        seed: seed of the random init, so that a backbone rebuilt from the same arguments has the same
            `weights_sha256` even without weights.
        **overrides: architecture keyword arguments passed to the library constructor
            (timm `create_model` kwargs, open_clip vision config fields).
    """
    builder = _lookup(name)
    if pretrained and weights is not None:
        raise ValueError(f"{name}: give either pretrained=True or weights=PATH, not both")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name}: seed must be an int, got {seed!r}")
    with seeded(seed):
        backbone = builder(pretrained=bool(pretrained), img_size=img_size, **overrides)
    assert isinstance(backbone, Backbone), type(backbone)
    if weights is not None:
        load_weights(backbone, weights)
    elif any(p.is_meta for p in backbone.parameters()):
        backbone.weights_sha256 = ""  # built on the meta device (shapes only): there are no bytes to hash
    else:
        backbone.weights_sha256 = state_dict_sha256(backbone)
    return backbone
