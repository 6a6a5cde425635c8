"""Layer-by-layer inspection: shapes, parameters, multiply-adds and receptive fields against hand counts."""

import json

import numpy as np
import torch
from PIL import Image

import imgclf
from conftest import synthetic_image
from imgclf.explain import feature_maps, inspect_model, mlp_parameters_for
from imgclf.models import create_model


def _by_name(layers):
    return {layer.name: layer for layer in layers}


def test_lenet5_layers_match_hand_computed_values():
    layers = _by_name(inspect_model(create_model("lenet5", 3, 10, 32), 3, 32))
    conv1, pool1 = layers["features.0"], layers["features.2"]
    conv2, pool2 = layers["features.3"], layers["features.5"]
    fc1 = layers["classifier.0"]
    assert conv1.output_shape == (6, 28, 28) and conv1.parameters == 3 * 6 * 25 + 6
    assert conv1.macs == 28 * 28 * 6 * (3 * 25)
    assert (conv1.receptive_field, conv1.jump) == (5, 1)
    assert (pool1.receptive_field, pool1.jump) == (6, 2)
    assert conv2.output_shape == (16, 10, 10) and conv2.macs == 10 * 10 * 16 * (6 * 25)
    assert (conv2.receptive_field, conv2.jump) == (14, 2)
    assert (pool2.receptive_field, pool2.jump) == (16, 4)
    assert fc1.parameters == 400 * 120 + 120 and fc1.macs == 400 * 120 and fc1.receptive_field is None


def test_resnet18_receptive_field_follows_the_main_path_not_the_shortcut():
    layers = _by_name(inspect_model(create_model("resnet18", 3, 10, 224), 3, 224))
    # the published theoretical receptive field of ResNet-18's last conv layer: 435 pixels, stride 32
    assert (layers["layer4.1.conv2"].receptive_field, layers["layer4.1.conv2"].jump) == (435, 32)
    assert layers["layer4.0.downsample.0"].jump == 32
    assert sum(layer.parameters for layer in layers.values()) == sum(
        p.numel() for p in create_model("resnet18", 3, 10, 224).parameters()
    )


def test_weight_sharing_shown_by_the_mlp_parameter_count():
    # an MLP on 28x28x3 = 2,352 inputs with 512-512 hidden units, against a conv layer's 456 weights
    assert mlp_parameters_for(3, 28, 10) == 2352 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert mlp_parameters_for(3, 224, 10) > 150_528 * 512


def test_inspect_a_run_writes_its_layers_kernels_and_feature_maps(trained_run, tmp_path):
    image = torch.from_numpy(synthetic_image(1, np.random.default_rng(0))).permute(2, 0, 1)
    result = imgclf.inspect(trained_run, image=image, out=tmp_path / "inspect", log=lambda _m: None)
    saved = json.loads((tmp_path / "inspect" / "layers.json").read_text())
    model = imgclf.load(trained_run).model
    assert saved["parameters"] == sum(p.numel() for p in model.parameters()) == result.parameters
    # the whitening stem: 2x2 kernels, 3 channels in, 24 filters out; its receptive field is 2
    stem = saved["layers"][0]
    assert stem["name"] == "stem.0" and stem["output_shape"] == [24, 15, 15] and stem["receptive_field"] == 2
    assert result.mlp_parameters > result.parameters
    for name in ("kernels.png", "feature_maps.png"):
        assert Image.open(tmp_path / "inspect" / name).size[0] > 100


def test_feature_maps_follow_each_block_and_pooling():
    model = create_model("lenet5", 3, 10, 32)
    maps = feature_maps(model, torch.rand(1, 3, 32, 32))
    # conv -> ReLU -> pool, twice: the maps after each activation and each pooling, at their sizes
    assert [tuple(m.shape) for _, m in maps] == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]


def test_names_in_other_scripts_draw_without_matplotlib_warnings(tmp_path):
    """Class and file names in Chinese or Japanese reach the plots; a missing glyph is never a raw warning."""
    import warnings

    from imgclf.plots.figures import plot_confusion_matrix

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_confusion_matrix([[3, 1], [0, 4]], ["猫 cat", "犬 dog"], tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 1000


def test_test_images_are_named_below_their_shared_folder_and_long_names_keep_their_end():
    """Captions and mistake lists name `cat/003.png`, not a bare `003.png` that every class may hold."""
    import types

    from imgclf.explain.errors import NAME_CHARS, test_image_names

    long = "/data/pets/dog/" + "a_very_long_photo_name_from_a_phone_camera_20261203_0001.jpg"
    split = types.SimpleNamespace(sources=["/data/pets/cat/003.png", "/data/pets/dog/003.png", long])
    names = test_image_names(split, [0, 1, 2])
    assert names[:2] == ["cat/003.png", "dog/003.png"]
    assert len(names[2]) == NAME_CHARS and names[2].startswith("dog/") and names[2].endswith("0001.jpg")
    assert test_image_names(types.SimpleNamespace(sources=None), [7]) == ["#7"]  # built-in data: its test index
