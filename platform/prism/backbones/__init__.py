"""Vision backbones (DINOv2, DINOv3, DINO, CLIP image towers) behind one contract.

    backbone = create_backbone("dinov2_vits14", weights="dinov2_vits14.safetensors", img_size=224)
    out = backbone(images)  # images (B, 3, H, W) normalised with backbone.mean / backbone.std
    out["cls"]      # (B, C)
    out["patches"]  # (B, H / p, W / p, C)

    out = backbone(images, layers=(3, -1))  # one pass; outputs of block 3 and of the last block
    out["layers"]   # ((B, H / p, W / p, C), (B, H / p, W / p, C)), before the final norm

    clip = create_backbone("clip_vitb16", weights="open_clip_vitb16.safetensors")
    clip(images)["embedding"]  # (B, D): CLIP.encode_image(images); D = clip.embedding_dim (None for DINO)

See `prism.backbones.base.Backbone` for the attributes and `freeze`, `prism.backbones.weights` for the
checkpoint formats `weights=` accepts.
"""

from prism.backbones import clip as _clip  # noqa: F401  (registers the open_clip backbones)
from prism.backbones import sam as _sam  # noqa: F401  (registers SAM's image encoders)
from prism.backbones import timm_eva as _timm_eva  # noqa: F401  (registers the DINOv3 backbones)
from prism.backbones import timm_vit as _timm_vit  # noqa: F401  (registers the timm ViT backbones)
from prism.backbones._registry import create_backbone, list_backbones, register_backbone
from prism.backbones.base import Backbone, state_dict_sha256
from prism.backbones.weights import load_weights

__all__ = [
    "Backbone",
    "create_backbone",
    "list_backbones",
    "load_weights",
    "register_backbone",
    "state_dict_sha256",
]
