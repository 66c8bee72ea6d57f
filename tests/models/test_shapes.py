"""Parameter counts against the papers, output shapes and argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shoal.models import char_lstm, cnn, mclr, mlp, resnet_small


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (mclr(60, 10), 610),  # FedProx, Synthetic(alpha, beta)
        (mlp(), 199_210),  # McMahan et al. 2017, 2NN
        (cnn(), 1_663_370),  # McMahan et al. 2017, CNN
        (cnn(padding="valid"), 582_026),
        (char_lstm(), 819_920),  # LEAF Shakespeare
    ],
)
def test_parameter_counts(model: nn.Module, expected: int) -> None:
    assert num_params(model) == expected


def test_models_have_no_buffers() -> None:
    # Buffers would have to be stacked and threaded through functional_call as state.
    for model in [mclr(60, 10), mlp(), cnn(), resnet_small(), char_lstm()]:
        assert list(model.buffers()) == []


@pytest.mark.parametrize(
    ("model", "x", "num_classes"),
    [
        (mclr(60, 10), torch.randn(4, 60), 10),
        (mclr(784, 10), torch.randn(4, 1, 28, 28), 10),
        (mlp(), torch.randn(4, 1, 28, 28), 10),
        (mlp(32, (16,), 5), torch.randn(4, 32), 5),
        (cnn(), torch.randn(4, 1, 28, 28), 10),
        (cnn(padding="valid"), torch.randn(4, 1, 28, 28), 10),
        (cnn(in_channels=3, num_classes=100, image_size=32), torch.randn(4, 3, 32, 32), 100),
        (resnet_small(), torch.randn(4, 3, 32, 32), 10),
        (
            resnet_small(7, in_channels=1, width=8, blocks_per_stage=(1, 1)),
            torch.randn(4, 1, 9, 9),
            7,
        ),
        (char_lstm(), torch.randint(0, 80, (4, 12)), 80),
    ],
)
def test_output_shapes(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    out = model(x)
    assert out.shape == (4, num_classes)
    assert torch.isfinite(out).all()


def test_resnet_stages_downsample() -> None:
    model = resnet_small(width=8, blocks_per_stage=(3, 3, 3))
    body = model.get_submodule("body")
    assert isinstance(body, nn.Sequential)
    feats = body[:-2](torch.randn(2, 3, 32, 32))  # before pooling
    assert feats.shape == (2, 32, 8, 8)
    assert model.get_parameter("head.weight").shape == (10, 32)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="padding"):
        cnn(padding="full")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        cnn(image_size=12, padding="valid")
    with pytest.raises(ValueError, match="divide"):
        resnet_small(width=10, groups=4)
    with pytest.raises(ValueError, match="blocks_per_stage"):
        resnet_small(blocks_per_stage=())
    # Bare TypeErrors before ("'int' object is not iterable", "'NoneType' ...").
    with pytest.raises(ValueError, match="resnet_small: blocks_per_stage must be a non-empty"):
        resnet_small(blocks_per_stage=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mlp: hidden must be a sequence"):
        mlp(hidden=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="char_lstm: hidden must be an integer >= 1, got 0"):
        char_lstm(hidden=0)
    with pytest.raises(ValueError, match="hidden must be a sequence of integers >= 1"):
        mlp(hidden=(0,))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        # Each failed inside torch or Python with a TypeError naming no argument.
        (lambda: cnn(num_classes=10.0), "cnn: num_classes must be an integer >= 1, got 10.0"),
        (lambda: mclr(5.0, 2), "mclr: in_features must be an integer >= 1, got 5.0"),
        (lambda: mlp(10, 5, 3), "mlp: hidden must be a sequence of integers >= 1, got 5"),
        (lambda: resnet_small(blocks_per_stage=(2.0,)), "blocks_per_stage"),
        (lambda: char_lstm(num_layers=True), "char_lstm: num_layers must be an integer"),
        # padding='same' already: the hint was to use padding='same'.
        (lambda: cnn(image_size=3), r"too small .* padding 2; use a larger image$"),
    ],
)
def test_model_arguments_of_the_wrong_type_are_refused_in_one_line(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_the_lstm_refuses_an_empty_sequence() -> None:
    with pytest.raises(ValueError, match="sequences of length >= 1, got length 0"):
        char_lstm()(torch.zeros(2, 0, dtype=torch.long))


def test_mlp_takes_its_hidden_sizes_from_an_iterator() -> None:
    # The size check read the iterator, and the model was built with no hidden layer.
    widths = mlp(784, (h for h in [200, 200]), 10)
    assert sum(p.numel() for p in widths.parameters()) == 199_210
