"""Pieces of the training loop (tune_ct/train/loop.py): the LR schedule, class weights, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tune_ct.train.loop import batches, class_weights, warmup_cosine


def lrs(epochs: int, steps: int, warmup_epochs: float, base: float = 0.1) -> list[float]:
    """The LR of every optimizer step of a run, as the loop steps the scheduler (once per batch)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    sched = warmup_cosine(opt, epochs, steps, warmup_epochs)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    out.append(opt.param_groups[0]["lr"])  # after the last step
    return out


def test_warmup_ramps_linearly_then_cosine_decays_to_zero():
    seen = lrs(epochs=4, steps=5, warmup_epochs=1)  # 5 warm-up steps of 20
    assert seen[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert seen[5] == pytest.approx(0.1)  # the peak right after warm-up
    decay = seen[5:]
    assert all(b < a for a, b in zip(decay, decay[1:]))  # strictly decreasing
    assert seen[-1] == pytest.approx(0.0, abs=1e-12)
    # Half-way through the decay (7.5 of 15 steps) the cosine is at half the peak.
    assert seen[5 + 7] > 0.05 > seen[5 + 8]


def test_without_warmup_the_first_step_uses_the_full_rate():
    seen = lrs(epochs=2, steps=3, warmup_epochs=0)
    assert seen[0] == pytest.approx(0.1)
    assert seen[3] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert seen[-1] == pytest.approx(0.0, abs=1e-12)


def test_fractional_warmup_epochs_count_whole_steps():
    seen = lrs(epochs=2, steps=4, warmup_epochs=0.5)  # int(0.5 * 4) = 2 warm-up steps
    assert seen[:3] == pytest.approx([0.05, 0.1, 0.1])


def test_class_weights_are_inverse_frequency_and_zero_for_absent_classes():
    labels = np.array([0, 0, 0, 1, 2, 2])  # counts 3, 1, 2, 0
    w = class_weights(labels)
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([6 / (4 * 3), 6 / (4 * 1), 6 / (4 * 2), 0.0])
    counts = np.bincount(labels, minlength=4)
    totals = w.numpy() * counts
    assert totals[:3] == pytest.approx([totals[0]] * 3)  # each present class weighs the same in total


def test_batches_drop_the_ragged_end_and_sort_each_batch():
    order = np.array([9, 3, 7, 1, 0, 8, 2, 6, 5, 4])
    got = list(batches(order, 4, drop_last=True))
    assert [b.tolist() for b in got] == [[1, 3, 7, 9], [0, 2, 6, 8]]  # the last two rows (5, 4) are dropped
    kept = list(batches(order, 4, drop_last=False))
    assert [b.tolist() for b in kept] == [[1, 3, 7, 9], [0, 2, 6, 8], [4, 5]]


def test_batches_keep_a_set_no_larger_than_one_batch():
    order = np.array([5, 2, 4])
    assert [b.tolist() for b in batches(order, 8, drop_last=True)] == [[2, 4, 5]]
    assert [b.tolist() for b in batches(order, 3, drop_last=True)] == [[2, 4, 5]]
    assert list(batches(np.array([], dtype=int), 4, drop_last=True)) == []
