"""The trainer and its one step: weight averaging, the norm scales' lr, the throughput probe and the lr sweep riding on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.data import BatchIterator, Split
from imgclf.models import create_model
from imgclf.recipes import DataFacts, resolve
from imgclf.train import Trainer, seconds_per_image
from imgclf.train.ema import Lookahead
from imgclf.train.optim import build_optimizer


def test_lookahead_waits_then_pulls_weights_to_the_average():
    model = nn.Linear(2, 1, bias=False)
    lookahead = Lookahead(model, total_steps=100)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lookahead.step(20)  # before 30% of training: nothing happens
    assert lookahead.state_dict() is None
    lookahead.step(30)  # first averaging step: the average starts at the current weights
    with torch.no_grad():
        model.weight.fill_(3.0)
    lookahead.step(100)  # last step: decay 0.95^5 = 0.774 toward the old average
    decay = 0.95**5
    assert torch.allclose(model.weight, torch.full((1, 2), decay * 1.0 + (1 - decay) * 3.0))
    assert torch.equal(lookahead.state_dict()["weight"], model.weight)
    lookahead.step(101)  # not a multiple of 5: untouched
    averaged = decay + (1 - decay) * 3.0
    assert torch.allclose(model.weight, torch.full((1, 2), averaged))
    with torch.no_grad():
        model.weight.fill_(5.0)
    lookahead.finish_epoch()  # an epoch ends on the average: steps since the last averaging are dropped
    assert torch.allclose(model.weight, torch.full((1, 2), averaged))


def test_norm_shifts_get_the_scaled_lr_and_other_biases_no_decay():
    model = create_model("cnn", 3, 10, 32, widths=[8, 16, 16])
    optimizer = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-3, norm_lr_scale=64)
    weights, norms, biases = optimizer.param_groups
    assert (norms["lr"], norms["weight_decay"]) == (6.4, 1e-3 / 64)
    assert any(p is model.groups[0][2].bias for p in norms["params"])
    # the whitening bias is no norm shift: base lr, no decay
    assert [p is model.stem[0].bias for p in biases["params"]] == [True]
    assert (biases["lr"], biases["weight_decay"]) == (0.1, 0.0)
    assert all(p.ndim == 4 or p.ndim == 2 for p in weights["params"]) and weights["weight_decay"] == 1e-3


def _trainer(settings: TrainConfig, model: nn.Module, n: int = 64) -> Trainer:
    """A trainer of ``model`` on ``n`` random 1x8x8 images of 3 classes, with the folder recipe's run config."""
    cfg, _ = resolve(settings, "folder", "cpu", DataFacts(n, 8))
    split = Split(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.arange(n) % 3)
    batches = BatchIterator(split, cfg.optim.batch_size, torch.device("cpu"), [0.5], [0.25], shuffle=True)
    return Trainer(model, cfg, batches)


def test_throughput_probe_times_the_trainers_step_and_leaves_the_model_untouched():
    model = create_model("cnn", 1, 3, 8, widths=[8, 8, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(TrainConfig(batch_size=16), model)
    assert 0 < seconds_per_image(trainer, min_seconds=0.05) < 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.steps == 0 and not trainer.optimizer.state  # the optimizer's momentum is undone too
    assert trainer.scheduler.last_epoch == 0


def test_the_lr_sweep_rides_on_the_trainer_and_leaves_it_as_it_was():
    """lr-find's sweep is a schedule on training's own trainer: the head/backbone groups keep their ratio, a
    backbone that starts frozen stays so during the sweep, and weights and optimizer are restored after."""
    from imgclf.models import get_model_spec, head_of

    model = create_model("cnn", 1, 3, 8, widths=[8, 8, 8])
    cfg, _ = resolve(
        TrainConfig(batch_size=16, backbone_lr_scale=0.1, freeze_epochs=1), "folder", "cpu", DataFacts(64, 8)
    )
    split = Split(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.arange(64) % 3)
    batches = BatchIterator(split, 16, torch.device("cpu"), [0.5], [0.25], shuffle=True)
    head = head_of(model, get_model_spec("cnn"))
    sweep = [1e-4 * 10**step for step in range(4)]
    trainer = Trainer(model, cfg, batches, head=head, lr_lambda=lambda step: sweep[step] / cfg.optim.lr)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_ids = {id(p) for p in getattr(model, head).parameters()}
    seen: list[tuple[float, float, bool]] = []

    def record(step: int, loss: float) -> bool:
        groups = trainer.optimizer.param_groups
        head_lr = next(g["lr"] for g in groups if id(g["params"][0]) in head_ids and g["weight_decay"])
        body = next(g for g in groups if id(g["params"][0]) not in head_ids and g["weight_decay"])
        seen.append((head_lr, body["lr"], body["params"][0].requires_grad))
        return True

    trainer.sweep(3, record)
    # the lr each step trained with: the sweep's, the backbone a tenth of it (and frozen: only the head learns)
    assert [h for h, _, _ in seen] == pytest.approx(sweep[1:4])
    assert all(b == pytest.approx(0.1 * h) and not trainable for h, b, trainable in seen)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.steps == 0 and all(p.requires_grad for p in trainer.trainable)
