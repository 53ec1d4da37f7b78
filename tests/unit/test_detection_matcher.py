"""Hungarian matching: the batched cost gives exactly the per-image assignment, which is optimal (checked
against brute force on small cases), and images without objects match nothing."""

from __future__ import annotations

import itertools

import torch

from prism.tasks.detection.matcher import HungarianMatcher


def random_case(seed, b=3, q=6, k=4, sizes=(2, 0, 4)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, q, k, generator=g)
    boxes = torch.rand(b, q, 4, generator=g) * 0.5 + 0.1
    targets = [{"labels": torch.randint(0, k, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.1}
               for n in sizes]
    return logits, boxes, targets


def test_batched_matching_equals_per_image_matching():
    m = HungarianMatcher()
    for seed in range(5):
        logits, boxes, targets = random_case(seed)
        batched = m(logits, boxes, targets)
        for i, t in enumerate(targets):
            (rows, cols), = m(logits[i:i + 1], boxes[i:i + 1], [t])
            assert torch.equal(batched[i][0], rows) and torch.equal(batched[i][1], cols)
        assert [len(r) for r, _ in batched] == [2, 0, 4]


def test_assignment_is_the_brute_force_optimum():
    m = HungarianMatcher()
    logits, boxes, targets = random_case(7, b=1, q=5, sizes=(3,))
    (rows, cols), = m(logits, boxes, targets)
    cost = m.cost(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"])
    best = min(sum(cost[p[j], j] for j in range(3)) for p in itertools.permutations(range(5), 3))
    assert torch.isclose(cost[rows, cols].sum(), best)


def test_no_objects_anywhere_matches_nothing():
    logits, boxes, targets = random_case(0, sizes=(0, 0, 0))
    assert all(len(r) == len(c) == 0 for r, c in HungarianMatcher()(logits, boxes, targets))


def test_a_query_on_the_box_with_the_right_class_wins():
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 1, 1] = 5.0  # query 1 is confident in class 1
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]])
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}
    (rows, cols), = HungarianMatcher()(logits, boxes, [target])
    assert rows.tolist() == [1] and cols.tolist() == [0]
