"""The CUDA path: bf16 autocast, channels_last, device-resident data. Skipped without a GPU."""

from dataclasses import replace

import pytest
import torch

from unlearn.original import new_model
from unlearn.presets import get_preset
from unlearn.train import accuracy, fit, predict

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


def test_training_on_cuda_learns_and_keeps_masks(digits):
    device = torch.device("cuda")
    preset = get_preset("digits")
    model = new_model(preset, digits, seed=0)
    mask = torch.zeros_like(model.net[0].weight)
    fit(model, digits.train, replace(preset.train, epochs=8), device, masks={"net.0.weight": mask})
    assert next(model.parameters()).device.type == "cuda"
    assert model.net[0].weight.abs().sum().item() == 0.0
    assert accuracy(model, digits.test, device) > 80.0


def test_cuda_and_cpu_predictions_agree(digits):
    model = new_model(get_preset("digits"), digits, seed=0).eval()
    on_cpu = predict(model, digits.test, torch.device("cpu"))
    on_gpu = predict(model, digits.test, torch.device("cuda"))
    assert (on_cpu.argmax(1) == on_gpu.argmax(1)).float().mean() > 0.95
