"""Label histograms, their text table, and feature-noise skew."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.data import feature_noise, format_histogram, label_histogram


def test_label_histogram_counts_by_hand() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histogram(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    assert hist.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]]
    assert label_histogram(torch.tensor(labels), [np.array([5])], 3).tolist() == [[0, 0, 1]]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        label_histogram(labels, [np.array([0])], 2)


def test_format_histogram_is_a_readable_table() -> None:
    hist = np.array([[5, 0, 12], [0, 7, 0]])
    text = format_histogram(hist)
    lines = text.splitlines()
    assert "client" in lines[0] and "#cls" in lines[0]
    assert lines[2].split() == ["0", "17", "2", "|", "5", ".", "12"]
    assert lines[3].split() == ["1", "7", "1", "|", ".", "7", "."]
    assert lines[-1].split() == ["total", "24", "3", "|", "5", "7", "12"]


def test_format_histogram_truncates_many_clients() -> None:
    hist = np.ones((50, 3), dtype=np.int64)
    text = format_histogram(hist, max_rows=6)
    assert "(44 more clients)" in text
    rows = [ln for ln in text.splitlines() if ln.strip()[:2].isdigit() or ln.strip()[:1].isdigit()]
    assert [r.split()[0] for r in rows] == ["0", "1", "2", "47", "48", "49"]
    assert text.splitlines()[-1].split()[:2] == ["total", "150"]
    # A data-parallel split's rows are workers (the table said "client" beside "workers: 50").
    workers = format_histogram(hist, max_rows=6, who="worker")
    assert workers.split()[0] == "worker" and "(44 more workers)" in workers


def test_feature_noise_scales_with_client_number() -> None:
    x = torch.zeros(4 * 5_000, 2)
    clients = [np.arange(i * 5_000, (i + 1) * 5_000) for i in range(4)]
    out = feature_noise(x, clients, sigma=2.0, rng=np.random.default_rng(0))
    assert torch.count_nonzero(x) == 0  # input untouched
    for i, idx in enumerate(clients):
        std = out[idx].std().item()
        assert std == pytest.approx(2.0 * i / 4, abs=0.04)
        assert abs(out[idx].mean().item()) < 0.04
    again = feature_noise(x, clients, sigma=2.0, rng=np.random.default_rng(0))
    assert torch.equal(out, again)


def test_feature_noise_leaves_unassigned_samples_and_rejects_tokens() -> None:
    x = torch.ones(10, 3)
    out = feature_noise(x, [np.array([0]), np.array([1, 2])], 1.0, np.random.default_rng(0))
    assert torch.equal(out[3:], x[3:]) and torch.equal(out[0], x[0])
    assert not torch.equal(out[1:3], x[1:3])
    with pytest.raises(TypeError, match="floating"):
        feature_noise(
            torch.ones(3, 2, dtype=torch.int64), [np.array([0])], 1.0, np.random.default_rng(0)
        )


def test_format_histogram_aligns_the_totals_with_the_columns() -> None:
    # Single-digit cells over many clients sum to wide totals; the cells were sized for the
    # clients' counts only, so the totals row ran past its columns.
    hist = np.full((40, 3), 7)
    lines = format_histogram(hist, max_rows=4).splitlines()
    assert len(lines[-1]) == len(lines[0]) == len(lines[2])
    assert lines[-1].split()[-3:] == ["280", "280", "280"]


def test_client_indices_must_not_be_boolean_masks() -> None:
    # A mask converted to int64 is indices 0 and 1: every selected sample counted as sample 1.
    labels = np.array([0, 1, 1, 2])
    mask = np.array([True, False, True, True])
    with pytest.raises(ValueError, match=r"client_indices\[0\] is a boolean mask"):
        label_histogram(labels, [mask], 3)
    with pytest.raises(ValueError, match=r"client_indices\[1\] is a boolean mask"):
        feature_noise(torch.zeros(4, 2), [np.array([0]), mask], 1.0, np.random.default_rng(0))
