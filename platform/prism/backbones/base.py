"""The `Backbone` module: one output contract and one freezing rule for every family.

A backbone wraps a library model (a timm `VisionTransformer`, an open_clip visual tower) under the
attribute `model` and maps a normalised image batch (B, 3, H, W) to

    {"cls": (B, C), "patches": (B, H / p, W / p, C)}           always
     "embedding": (B, D)                                        when embedding_dim is not None (CLIP)
     "layers": ((B, H / p, W / p, C), ...)                      when forward(x, layers=[i, ...]) asks

where p is `patch_size`, C is `embed_dim` and D is `embedding_dim`. "cls" and "patches" have passed the
model's final norm; extra prefix tokens (DINOv2 registers) are never part of "patches". "embedding" is the
image embedding of a CLIP model's joint image-text space (`CLIP.encode_image`, not normalised). "layers"
holds the outputs of the requested transformer blocks (before the final norm, prefix tokens removed), one
per requested index in the order asked, all from the same single pass over the blocks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

FreezeSpec = str | int | Sequence[int]


def state_dict_sha256(module_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 over a state dict: for each tensor in sorted-name order, its name, dtype, shape and bytes.

    Equal hashes mean equal names and bit-identical tensors. Accepts an `nn.Module` (its `state_dict()`)
    or a mapping name -> tensor.
    """
    state = (
        module_or_state_dict.state_dict()
        if isinstance(module_or_state_dict, nn.Module)
        else module_or_state_dict
    )
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with the CPU RNG seeded to `seed`, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_img_size(img_size: object, patch_size: int, name: str) -> int:
    """Return `img_size` as an int after checking it is a positive multiple of `patch_size`."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
        raise ValueError(f"{name}: img_size must be a positive int, got {img_size!r}")
    if img_size % patch_size:
        lower = max(patch_size, img_size // patch_size * patch_size)
        raise ValueError(
            f"{name}: img_size={img_size} is not a multiple of the patch size {patch_size}; "
            f"use e.g. {lower} or {lower + patch_size}"
        )
    return img_size


def is_lora_parameter(name: str) -> bool:
    """True for parameters added by a LoRA adapter (peft names them `lora_A`, `lora_B`, `lora_magnitude_vector`...)."""
    return ".lora_" in name or name.startswith("lora_")


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Backbone(nn.Module):
    """Base class of every registered backbone; subclasses implement `_features`.

    Attributes (set at build): name, family, patch_size, embed_dim, embedding_dim (width D of the
    "embedding" output, None when the family has none), img_size, num_blocks, block_names (qualified
    module names relative to this module, e.g. "model.blocks.3"),
    mean / std (the input normalisation the weights expect), weights_sha256 (hash of the base
    state dict as built, see `state_dict_sha256`) and dynamic_img_size (whether inputs other than
    img_size x img_size are accepted).
    """

    family: str = ""
    block_prefix: str = ""  # e.g. "model.blocks"; block i is f"{block_prefix}.{i}"
    embedding_names: tuple[str, ...] = ()  # parameters/modules frozen with the embeddings
    dynamic_img_size: bool = False

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        patch_size: int,
        embed_dim: int,
        img_size: int,
        num_blocks: int,
        mean: Sequence[float],
        std: Sequence[float],
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.img_size = int(img_size)
        self.num_blocks = int(num_blocks)
        self.block_names = [f"{self.block_prefix}.{i}" for i in range(self.num_blocks)]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_sha256 = ""
        for block in self.block_names:
            assert self.get_submodule(block) is not None, block

    # ------------------------------------------------------------------ forward
    def _features(
        self, x: torch.Tensor, indices: tuple[int, ...]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """One pass over the blocks. x (B, 3, H, W), indices ascending and unique in 0..num_blocks-1 ->

        ({"cls": (B, C), "patches": (B, N, C)[, "embedding": (B, D)]}, [(B, N, C) per index])

        with N = H/p * W/p tokens in row-major order; the list holds the block outputs, prefix tokens removed.
        """
        raise NotImplementedError

    def resolve_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """Block indices `layers` (negative ones count from the end, -1 = last) as indices in 0..num_blocks-1.

        ValueError for a non-sequence, a non-int, an index out of range or a block named twice.
        """
        n = self.num_blocks
        valid = f"valid block indices are -{n}..{n - 1} (-1 = the last block)"
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise ValueError(
                f"{self.name}: layers must be a sequence of block indices, got {layers!r}; {valid}"
            )
        bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
        if bad:
            raise ValueError(f"{self.name}: layers {list(layers)} has {bad} out of range; {valid}")
        resolved = tuple(i % n for i in layers)
        twice = sorted({i for i in resolved if resolved.count(i) > 1})
        if twice:
            raise ValueError(
                f"{self.name}: layers {list(layers)} names block(s) {twice} more than once; give each block "
                f"once ({valid})"
            )
        return resolved

    def forward(
        self, x: torch.Tensor, layers: Sequence[int] = ()
    ) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """x: (B, 3, H, W) normalised with `mean`/`std`; layers: block indices (see `resolve_layers`) ->

        {"cls": (B, C), "patches": (B, H/p, W/p, C)}, plus "embedding": (B, D) when `embedding_dim` is set,
        plus "layers": a tuple of (B, H/p, W/p, C) block outputs, one per entry of `layers`, when non-empty.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        p = self.patch_size
        if self.dynamic_img_size:
            if height % p or width % p:
                raise ValueError(
                    f"{self.name}: input size {height}x{width} is not a multiple of the patch size {p}; "
                    "resize or pad the images"
                )
        elif (height, width) != (self.img_size, self.img_size):
            raise ValueError(
                f"{self.name}: input size {height}x{width} differs from img_size={self.img_size} and this "
                f"family has fixed position embeddings; resize the images to {self.img_size}x{self.img_size} "
                "or rebuild the backbone with another img_size"
            )
        wanted = self.resolve_layers(layers)
        taken = tuple(sorted(wanted))
        out, blocks = self._features(x, taken)
        assert len(blocks) == len(taken), (len(blocks), taken)
        grid = (x.shape[0], height // p, width // p, -1)
        result: dict[str, torch.Tensor | tuple[torch.Tensor, ...]] = dict(out)
        result["patches"] = out["patches"].reshape(grid)
        if wanted:
            by_index = dict(zip(taken, blocks, strict=True))
            result["layers"] = tuple(by_index[i].reshape(grid) for i in wanted)
        return result

    # ------------------------------------------------------------------ freezing
    def block_index(self, param_name: str) -> int | None:
        """Index of the block holding parameter `param_name` (a name from `named_parameters()`), else None."""
        match = re.match(rf"{re.escape(self.block_prefix)}\.(\d+)\.", param_name)
        return int(match.group(1)) if match else None

    def is_embedding_parameter(self, param_name: str) -> bool:
        """True for the patch/class/position embedding parameters (and the pre-block norm)."""
        return _matches(param_name, self.embedding_names)

    def base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) for every parameter that is not a LoRA adapter parameter."""
        for name, param in self.named_parameters():
            if not is_lora_parameter(name):
                yield name, param

    def freeze(self, spec: FreezeSpec) -> Backbone:
        """Set requires_grad on the base (non-LoRA) parameters; LoRA parameters are left as they are.

        spec:
          "none"       every base parameter trainable
          "all"        every base parameter frozen
          N (int)      embeddings and blocks 0..N-1 frozen, the rest trainable (0 <= N <= num_blocks)
          [i, j, ...]  exactly those blocks frozen, the rest trainable (0 <= i < num_blocks)
        Returns self.
        """
        frozen_blocks, freeze_embeddings, freeze_all = self._parse_freeze(spec)
        for name, param in self.base_parameters():
            if freeze_all:
                frozen = True
            elif self.is_embedding_parameter(name):
                frozen = freeze_embeddings
            else:
                frozen = self.block_index(name) in frozen_blocks
            param.requires_grad_(not frozen)
        return self

    def _parse_freeze(self, spec: FreezeSpec) -> tuple[set[int], bool, bool]:
        n = self.num_blocks
        if isinstance(spec, str):
            if spec == "none":
                return set(), False, False
            if spec == "all":
                return set(), True, True
            raise ValueError(
                f"{self.name}: freeze spec {spec!r} unknown; use 'none', 'all', an int or a list of ints"
            )
        if isinstance(spec, bool):
            raise ValueError(
                f"{self.name}: freeze spec must be 'none', 'all', an int or a list of ints, got {spec!r}"
            )
        if isinstance(spec, int):
            if not 0 <= spec <= n:
                raise ValueError(
                    f"{self.name}: freeze({spec}) out of range; the backbone has {n} blocks (0..{n})"
                )
            return set(range(spec)), True, False
        if isinstance(spec, Sequence):
            blocks = list(spec)
            bad = [i for i in blocks if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
            if bad:
                raise ValueError(
                    f"{self.name}: freeze block indices {bad} out of range; valid indices are 0..{n - 1}"
                )
            return set(blocks), False, False
        raise ValueError(
            f"{self.name}: freeze spec must be 'none', 'all', an int or a list of ints, got {spec!r}"
        )

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, family={self.family!r}, patch_size={self.patch_size}, "
            f"embed_dim={self.embed_dim}, embedding_dim={self.embedding_dim}, img_size={self.img_size}, "
            f"num_blocks={self.num_blocks}"
        )
