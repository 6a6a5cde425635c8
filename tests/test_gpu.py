"""CUDA paths: mixed precision training and inference on the GPU (skipped where there is none)."""

import pytest
import torch

import imgclf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_train_with_mixed_precision_on_cuda(in_tmp):
    result = imgclf.train(data="digits", device="cuda", verbose=False)
    assert result.metrics["device"].startswith("cuda")
    assert result.config.batch_size <= 512 and result.config.model_args == {"widths": [64, 128, 256]}
    assert result.accuracy >= 0.97
    model = imgclf.load(result.run_dir, device="cuda")
    assert next(model.model.parameters()).is_cuda
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    assert model.predict_proba(x).shape == (4, 10)
