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


def test_predict_and_serve_options_are_declared_as_settings_and_checked():
    from imgclf.config import PredictOptions, declared
    from imgclf.errors import ConfigError
    from imgclf.export import backend_names
    from imgclf.serve.settings import ServeSettings

    assert PredictOptions().top_k == 1 and PredictOptions(threshold=0.3).threshold == 0.3
    with pytest.raises(ConfigError, match="min_confidence 1.5 must be a probability between 0 and 1"):
        PredictOptions(min_confidence=1.5)
    with pytest.raises(ConfigError, match="backend 'ncnn' is not one of"):
        PredictOptions(backend="ncnn")
    with pytest.raises(ConfigError, match="max_images 0 must be positive"):
        ServeSettings(max_images=0)
    assert {s.name for s in declared(PredictOptions)} >= {"top_k", "min_confidence", "threshold", "backend", "out"}
    backend = next(s for s in declared(PredictOptions) if s.name == "backend")
    assert backend.meta["choices"] == backend_names()  # the export table's formats, and PyTorch


def test_the_command_line_generates_predict_and_serves_flags_from_their_declarations():
    import argparse

    from imgclf.cli import build_parser
    from imgclf.config import PredictOptions, declared
    from imgclf.serve.settings import ServeSettings

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command, declaration in (("predict", PredictOptions), ("serve", ServeSettings)):
        flags = {a.dest for a in sub.choices[command]._actions if a.option_strings}
        assert {s.name for s in declared(declaration)} <= flags, command
    serve = parser.parse_args(["serve", "run", "--max-upload-mb", "2.5", "--top-k", "3"])
    assert serve.max_upload_bytes == 2_500_000 and serve.top_k == 3  # megabytes on the command line, bytes inside
    assert "megabytes a request may send (default: 10)" in " ".join(sub.choices["serve"].format_help().split())
    predict = parser.parse_args(["predict", "run", "a.png"])
    assert not {"top_k", "backend"} & set(vars(predict))  # unset: the declaration's default applies


def test_absolute_paths_and_a_resumed_runs_record_keep_where_each_value_came_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = TrainConfig(data="photos", lr=0.1).replace(_origin="config x.yaml", data_dir="cache")
    absolute = settings.with_absolute_paths()
    assert absolute.data == str(tmp_path / "photos") and absolute.data_dir == str(tmp_path / "cache")
    assert absolute.origin("data") == "you" and absolute.origin("data_dir") == "config x.yaml"
    assert TrainConfig(data="mnist").with_absolute_paths(builtin=True).data == "mnist"  # a dataset's name stays
    saved = {"optim": {"lr": 0.1, "batch_size": 64}, "sources": {"lr": "recipe folder/default"}}
    resumed = TrainConfig.from_dict(saved, source="last.pt", keep_sources=True)
    assert resumed.origin("lr") == "recipe folder/default" and resumed.origin("batch_size") == "config last.pt"
    assert TrainConfig.from_dict(saved, source="last.pt").origin("lr") == "config last.pt"


def test_a_decode_spec_is_the_data_configs_own():
    from imgclf.config import DataConfig, DecodeSpec

    spec = DataConfig(data="x", resize="pad", max_image_pixels=1000).decode_spec(32)
    assert spec == DecodeSpec(32, "pad", 1000) and spec.at(64) == DecodeSpec(64, "pad", 1000)
