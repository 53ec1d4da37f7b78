"""SAM's mask decoder, batched over images.

segment-anything's ``MaskDecoder.predict_masks`` takes one image per call: it ``repeat_interleave``s the
image embedding once per prompt, so B images with one prompt each would give B × B pairs. Here
``image_embeddings`` is (B, C, h, w) — B different images — and the prompts are (B·P, N, C), P prompts per
image, image-major; the image embedding is repeated P times per image, never mixed across images::

    image_embeddings (B, C, h, w)   image_pe (1, C, h, w)
    sparse (B·P, N, C)              dense (B·P, C, h, w)
      → masks (B·P, M, 4h, 4w) logits, iou (B·P, M)       M = 1, or 3 with multimask_output

The weights and every other computation are SAM's own (the class subclasses ``MaskDecoder``), so an official
checkpoint loads into it unchanged and one image through it equals SAM's stock decoder.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder

__all__ = ["BatchedMaskDecoder"]


class BatchedMaskDecoder(MaskDecoder):
    """``MaskDecoder`` whose ``predict_masks`` keeps each image's prompts on that image (see the module)."""

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        b = image_embeddings.shape[0]
        n = sparse_prompt_embeddings.shape[0]
        if n % b:
            raise ValueError(f"{n} prompt sets for {b} images: give the same number of prompts per image")
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        src = torch.repeat_interleave(image_embeddings, n // b, dim=0) + dense_prompt_embeddings
        pos_src = image_pe.expand(n, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + self.num_mask_tokens), :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(n, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        _, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(n, c, h * w)).reshape(n, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)
