"""Text-prompted segmentation (in progress): DINOv2 patches into SAM's prompt encoder and mask decoder,
conditioned on CLIP text tokens. Not registered as a task yet; see ``model.py`` for the heads."""
