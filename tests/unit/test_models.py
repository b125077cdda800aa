"""Models built by name, shaped by the data set; normalisation inside the model."""

import pytest
import torch
from torch import nn

from unlearn.errors import UnknownModelError
from unlearn.models import build_model


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("digits_resnet", (1, 8, 8)),
        ("resnet18", (3, 32, 32)),
        ("vgg16_bn", (3, 32, 32)),
        ("vgg16_bn", (1, 8, 8)),
        ("resnet18", (1, 8, 8)),
    ],
)
def test_models_map_inputs_to_class_logits(arch, shape):
    model = build_model(arch, shape, 7, [0.5] * shape[0], [0.25] * shape[0]).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 7)


def test_resnet18_has_the_cifar_stem():
    model = build_model("resnet18", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
    assert model.net.conv1.kernel_size == (3, 3) and model.net.conv1.stride == (1, 1)
    assert isinstance(model.net.maxpool, nn.Identity)


def test_normalisation_lives_inside_the_model():
    model = build_model("digits_resnet", (1, 8, 8), 10, [0.3], [0.4])
    assert torch.allclose(model.normalize(torch.full((1, 1, 8, 8), 0.7)), torch.ones(1, 1, 8, 8))
    assert "normalize.mean" in model.state_dict()


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="resnet18"):
        build_model("alexnet", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
