"""SAM's mask decoder over a batch of images: Prism's batched decoder vs SAM's own, called image by image.

segment-anything's ``MaskDecoder`` takes one image per call (it repeats the image embedding per prompt, so a
batch of B images with one prompt each would pair every image with every prompt). The reference is what a
user of it must write for B images: a Python loop of B calls. Prism's
:class:`~prism.tasks.segment.decoder.BatchedMaskDecoder` takes the B images in one call. Both are SAM ViT-B's
decoder (256 channels, a 64 × 64 image embedding, the weights shared), with 2 sparse text tokens per image
and no dense prompt, float32; outputs are checked equal before timing. Images/s is the best of a few repeats,
inference (no grad) and a training step (forward + backward).

    python bench/segment_decoder.py            # 8 images, SAM's 64 x 64 grid
    python bench/segment_decoder.py --quick    # 4 images, a 32 x 32 grid
"""

from __future__ import annotations

import time

import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from _common import BenchResult, Row, bench_parser, write_result
from prism.tasks.segment.sam_parts import build_mask_decoder, build_prompt_encoder

TOKENS = 2
NOTE = ("On a CPU the loop may well be ahead: one image's 64 x 64 x 256 activations stay in cache, B images' "
        "do not, and there is no launch cost to amortise. The batched call is for GPUs (one launch per layer "
        "for the whole batch) and for correctness: SAM's own decoder cannot take B different images at once.")


def stock_copy(batched) -> MaskDecoder:
    t = batched.transformer
    stock = MaskDecoder(transformer_dim=batched.transformer_dim, num_multimask_outputs=batched.num_multimask_outputs,
                        iou_head_hidden_dim=batched.iou_prediction_head.layers[0].out_features,
                        transformer=TwoWayTransformer(depth=len(t.layers), embedding_dim=t.embedding_dim,
                                                      mlp_dim=t.mlp_dim, num_heads=t.num_heads))
    stock.load_state_dict(batched.state_dict(), strict=True)
    return stock


def run_batched(dec, images, pe, sparse, dense):
    return dec(images, pe, sparse, dense, multimask_output=False)[0]


def run_loop(dec, images, pe, sparse, dense):
    return torch.cat([dec(images[i:i + 1], pe, sparse[i:i + 1], dense[i:i + 1], multimask_output=False)[0]
                      for i in range(len(images))])


def images_per_s(fn, dec, inputs, train: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        if train:
            fn(dec, *inputs).square().mean().backward()
            dec.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                fn(dec, *inputs)
        best = min(best, time.perf_counter() - t0)
    return len(inputs[0]) / best


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    b, grid, repeats = (4, 32, 3) if args.quick else (8, 64, 5)
    torch.manual_seed(0)
    batched = build_mask_decoder("vit_b")
    stock = stock_copy(batched)
    d = batched.transformer_dim
    pe = build_prompt_encoder("vit_b", grid=grid, image_size=grid * 16).get_dense_pe()
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(b, d, grid, grid, generator=g), pe, torch.randn(b, TOKENS, d, generator=g),
              torch.zeros(b, d, grid, grid))
    with torch.no_grad():
        torch.testing.assert_close(run_batched(batched, *inputs), run_loop(stock, *inputs), atol=1e-4, rtol=1e-4)
    rows, details = [], {}
    for train, what in ((False, "inference"), (True, "training step (forward + backward)")):
        for dec, fn in ((batched, run_batched), (stock, run_loop)):  # warm-up
            images_per_s(fn, dec, inputs, train, 1)
        fast = images_per_s(run_batched, batched, inputs, train, repeats)
        slow = images_per_s(run_loop, stock, inputs, train, repeats)
        details[what] = {"batched_img_s": fast, "loop_img_s": slow}
        rows.append(Row(f"{what}, {b} images", "img/s", fast, slow, prism_label="batched",
                        reference_label="SAM, image by image"))
    write_result(BenchResult(name="segment_decoder", title="SAM's mask decoder: batched over images vs per-image calls",
                             rows=rows, quick=args.quick,
                             setup=f"SAM ViT-B decoder (256 ch), {grid} x {grid} embedding, {TOKENS} text tokens, "
                                   f"float32, {torch.get_num_threads()} threads",
                             notes=[NOTE], details=details))


if __name__ == "__main__":
    main()
