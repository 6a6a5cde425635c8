"""Settings declared once: checked when given, turned into flags, and a command's options declared alike."""

from __future__ import annotations

import pytest

from imgclf.config import TrainConfig


def test_settings_are_checked_when_given():
    from imgclf.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs must be a whole number, got 'ten'"):
        TrainConfig(epochs="ten")
    with pytest.raises(ConfigError, match="optimizer 'lamb' is not one of sgd, adam, adamw"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ConfigError, match="val_split 1.5 must be between 0 and 1"):
        TrainConfig(val_split=1.5)
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) epoch;"):
        TrainConfig(epoch=3)
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
