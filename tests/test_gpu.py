"""CUDA paths: mixed precision training and inference on the GPU (skipped where there is none)."""

import pytest
import torch

import imgclf
from imgclf.config import TrainConfig
from imgclf.data import BatchIterator, Split
from imgclf.models import create_model
from imgclf.recipes import DataFacts, resolve
from imgclf.train import Trainer, seconds_per_image

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_train_with_mixed_precision_on_cuda(in_tmp):
    result = imgclf.train(data="digits", device="cuda", verbose=False)
    assert result.metrics["device"].startswith("cuda")
    cfg = result.config
    assert cfg.optim.batch_size <= 512 and cfg.model.model_args == {"widths": [64, 128, 256]} and cfg.run.compile
    assert result.accuracy >= 0.97
    model = imgclf.load(result.run_dir, device="cuda")
    assert next(model.model.parameters()).is_cuda
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    assert model.predict_proba(x).shape == (4, 10)


def test_the_budget_probe_times_the_compiled_bf16_step_training_runs():
    """On a GPU the run compiles and autocasts: the probe times that step, not an eager fp32 one."""
    device = torch.device("cuda")
    cfg, _ = resolve(TrainConfig(batch_size=64), "folder", "cuda", DataFacts(512, 16))
    assert cfg.run.compile and cfg.run.amp
    split = Split(torch.randint(0, 256, (512, 3, 16, 16), dtype=torch.uint8), torch.arange(512) % 4)
    batches = BatchIterator(split, 64, device, [0.5] * 3, [0.25] * 3, shuffle=True, drop_last=True)
    model = create_model("cnn", 3, 4, 16, **cfg.model.model_args).to(device)
    trainer = Trainer(model, cfg, batches)
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    assert 0 < seconds_per_image(trainer, min_seconds=0.2) < 1
    assert trainer.compile_seconds > 0  # the compile warm-up ran before the clock started
