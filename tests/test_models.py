import pytest
import torch
import torchvision
from torchvision.models import resnet18

from imgclf.config import ModelConfig
from imgclf.errors import ModelError
from imgclf.models import count_parameters, create_model, get_model_spec, head_of, model_names
from imgclf.models.cnn import WhiteningConv
from imgclf.train import build_model


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("channels, size, classes", [(1, 28, 10), (3, 32, 7)])
def test_every_registered_model_runs_forward_and_backward(name, channels, size, classes):
    """As timm's tests do for its registry: the output's shape, and a gradient for every trainable parameter."""
    torch.manual_seed(0)
    model = create_model(name, channels, classes, size).train()
    x = torch.randn(4, channels, size, size)
    logits = model(x)
    assert logits.shape == (4, classes) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(4) % classes).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"{name}: no gradient reaches {missing}"
    if hasattr(model, "init_from_data"):  # a data-dependent first layer (the cnn's whitening) keeps its shape
        model.init_from_data(x)
        assert model(x).shape == (4, classes)


def test_registry_lists_the_tutorial_models_then_ours():
    assert model_names() == ["mlp", "cnn2", "lenet5", "cnn4", "resnet18", "cnn", "lite0", "lite1", "lite2"]


def test_parameter_counts_of_the_tutorial_networks():
    # cnn2 on MNIST: conv 1->16 5x5 (416) + conv 16->32 5x5 (12,832) + linear 32*7*7->10 (15,690)
    assert count_parameters(create_model("cnn2", 1, 10, 28)) == 416 + 12_832 + 15_690
    # LeNet-5 on CIFAR-10: 456 + 2,416 + 400*120+120 + 120*84+84 + 84*10+10
    assert count_parameters(create_model("lenet5", 3, 10, 32)) == 456 + 2_416 + 48_120 + 10_164 + 850
    # the MLP: 784-512-512-10
    assert count_parameters(create_model("mlp", 1, 10, 28)) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


def test_cnn_handles_tiny_and_large_inputs():
    for size in (8, 64, 96):
        assert create_model("cnn", 3, 4, size)(torch.randn(2, 3, size, size)).shape == (2, 4)


def test_image_too_small_for_model():
    with pytest.raises(ModelError, match=r"lenet5: needs images of at least 16x16, got 8x8; pass image_size=32"):
        create_model("lenet5", 1, 10, 8)


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'vgg99': use one of mlp, cnn2"):
        create_model("vgg99", 3, 10, 32)


CPU = torch.device("cpu")


class _Data:  # the fields _build_model reads
    channels, num_classes, image_size = 1, 5, 32


def test_pretrained_resnet18_from_a_local_weights_file(tmp_path):
    reference = resnet18(weights=None)  # stands in for ImageNet weights, which cannot be downloaded here
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    cfg = ModelConfig(model="resnet18", weights=str(tmp_path / "resnet18.pth"))
    model = build_model(cfg, _Data(), CPU)
    # grey input: the RGB stem kernels summed over colour; the rest copied; a new 5-class head
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.fc.out_features == 5


def test_weights_file_that_does_not_fit(tmp_path):
    torch.save(create_model("cnn", 3, 10, 32).state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(ModelError, match="do not fit resnet18"):
        build_model(ModelConfig(model="resnet18", weights=str(tmp_path / "cnn.pth")), _Data(), CPU)


def test_pretrained_asks_for_a_model_that_has_weights():
    from imgclf.errors import ConfigError

    with pytest.raises(ConfigError, match="model cnn has no pretrained weights"):
        build_model(ModelConfig(model="cnn", pretrained=True), _Data(), CPU)


def test_pretrained_without_network_points_to_weights_file(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(ModelError, match="pass weights=FILE"):
        build_model(ModelConfig(model="resnet18", pretrained=True), _Data(), CPU)


@pytest.mark.parametrize(
    "name, build_reference, stem, body, head",
    [
        (
            "torchvision:mobilenet_v3_small",
            lambda: torchvision.models.mobilenet_v3_small(weights=None),
            "features.0.0.weight",
            "features.5.block.0.0.weight",
            "classifier.3",
        ),
        (
            "timm:resnet18",
            lambda: __import__("timm").create_model("resnet18", pretrained=False),
            "conv1.weight",
            "layer3.0.conv1.weight",
            "fc",
        ),
    ],
)
def test_backbone_by_name_from_a_local_weights_file(name, build_reference, stem, body, head, tmp_path):
    reference = build_reference()  # stands in for ImageNet weights: 1000 classes, RGB
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    model = build_model(ModelConfig(model=name, weights=str(tmp_path / "weights.pth")), _Data(), CPU)
    reference_state, state = reference.state_dict(), model.state_dict()
    assert torch.allclose(state[stem], reference_state[stem].sum(1, keepdim=True))  # grey stem: RGB kernels summed
    assert torch.equal(state[body], reference_state[body])
    assert model.get_submodule(head).out_features == 5  # a new head for this dataset's classes
    assert head_of(model, get_model_spec(name)) == head.split(".")[0]


def test_backbone_names_that_do_not_exist():
    with pytest.raises(ModelError, match="torchvision:resnet_x: not a torchvision classification model"):
        create_model("torchvision:resnet_x", 3, 10, 32)
    with pytest.raises(ModelError, match="timm:no_such_net: not a timm model"):
        create_model("timm:no_such_net", 3, 10, 32)


def test_registries_find_names_as_registered_and_warn_on_a_second_registration(monkeypatch):
    from imgclf.data import get_dataset, register_dataset
    from imgclf.data import registry as dataset_registry
    from imgclf.models import register_model
    from imgclf.models import registry as model_registry

    for registry in (model_registry._MODELS, dataset_registry._DATASETS):  # the test's entries leave with it
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))

    @register_model("MyNet_Test", "a test model")
    def my_net(in_channels, num_classes, image_size):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size**2, num_classes))

    assert get_model_spec("MyNet_Test").name == "MyNet_Test" and get_model_spec("mynet_test").build is my_net
    assert create_model("MyNet_Test", 1, 3, 4)(torch.zeros(2, 1, 4, 4)).shape == (2, 3)

    @register_dataset("MyPhotos_Test", "a test dataset")
    def my_photos(cfg):
        raise AssertionError("not loaded here")

    assert get_dataset("MyPhotos_Test").load is my_photos and get_dataset("myphotos_test").name == "MyPhotos_Test"
    with pytest.warns(UserWarning, match="model 'mynet_test' was registered twice; the later definition replaces"):
        register_model("mynet_test", "again")(my_net)
    with pytest.warns(UserWarning, match="dataset 'MyPhotos_Test' was registered twice"):
        register_dataset("MyPhotos_Test", "again")(my_photos)


def test_whitening_layer_decorrelates_patches():
    torch.manual_seed(0)
    mixing = torch.tensor([[1.0, 0.9, 0.8], [0.0, 0.4, 0.3], [0.0, 0.0, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(200, 3, 12, 12))  # correlated channels
    layer = WhiteningConv(3)
    layer.init_from_images(images)
    assert layer.out_channels == 24 and not layer.weight.requires_grad
    features = layer(images)[:, :12] - layer.bias[:12].view(1, -1, 1, 1)  # the + half; the - half mirrors it
    flat = features.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.03)  # eps shrinks the weakest direction a little
    assert torch.allclose(layer(images)[:, 12:] - layer.bias[12:].view(1, -1, 1, 1), -features)


def test_cnn_adapts_to_tiny_and_large_images():
    for size, channels in ((8, 1), (28, 1), (64, 3)):
        model = create_model("cnn", channels, 7, size, widths=[8, 16, 32])
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)
    frozen = [name for name, p in create_model("cnn", 3, 10, 32).named_parameters() if not p.requires_grad]
    assert "stem.0.weight" in frozen and all(n.endswith("weight") for n in frozen)  # whitening and norm scales


@pytest.mark.parametrize("name", model_names())
def test_the_layer_table_of_every_model_holds_all_its_weights_and_no_identity_rows(name):
    """The report's "Inside the model" adds up to the summary's parameter count (timm's norm+activation
    modules hold weights beside children) and lists no layer that does nothing."""
    from imgclf.explain.inspect import inspect_model

    model = create_model(name, 3, 5, 32)
    layers = inspect_model(model, 3, 32)
    assert sum(layer.parameters for layer in layers) == count_parameters(model)
    assert not [layer.name for layer in layers if layer.kind == "Identity"]
