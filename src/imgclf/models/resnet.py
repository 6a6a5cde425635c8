"""ResNet-18 from torchvision, with ImageNet weights for transfer learning (the tutorial's setup)."""

from __future__ import annotations


import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18 as tv_resnet18

from ..errors import ModelError
from .registry import register_model

IMAGENET_STATS = (list(ResNet18_Weights.IMAGENET1K_V1.transforms().mean), list(ResNet18_Weights.IMAGENET1K_V1.transforms().std))


def _read_weights_file(path: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"--weights {path}: no such file") from None
    except Exception as exc:  # unpickling refused or corrupt
        raise ModelError(f"--weights {path}: not a PyTorch weights file ({exc.__class__.__name__}); save one with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state:  # an imgclf or Lightning checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"--weights {path}: expected a state dict (name -> tensor)")
    return state


def load_resnet_weights(model: nn.Module, weights_file: str | None) -> None:
    """ImageNet weights (torchvision's enum, downloaded and cached by torch.hub) or a local file.

    The classifier head is left as built (it has this dataset's class count); a 1-channel stem gets the
    pretrained RGB kernels summed over colour, which is what a grey image fed as RGB would see.
    """
    if weights_file:
        state = _read_weights_file(weights_file)
        source = f"--weights {weights_file}"
    else:
        try:
            state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as exc:
            raise ModelError(
                f"could not download ResNet-18 ImageNet weights ({exc.__class__.__name__}); download "
                f"{ResNet18_Weights.IMAGENET1K_V1.url} elsewhere and pass --weights FILE"
            ) from None
        source = "ImageNet weights"
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    stem = state.get("conv1.weight")
    if stem is not None and stem.shape[1] != model.conv1.weight.shape[1]:
        state["conv1.weight"] = stem.sum(dim=1, keepdim=True) if model.conv1.weight.shape[1] == 1 else stem.mean(1, keepdim=True).repeat(1, model.conv1.weight.shape[1], 1, 1)
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if not k.startswith("fc.") and k not in state]
    if bad or missing:
        raise ModelError(f"{source} do not fit resnet18 ({len(bad)} unexpected, {len(missing)} missing tensors, e.g. {(bad + missing)[0]}); pass a torchvision resnet18 state dict")
    model.load_state_dict(state, strict=False)


@register_model(
    "resnet18",
    "torchvision ResNet-18; --pretrained loads ImageNet weights (or --weights FILE) and replaces the head",
    head="fc",
    load_pretrained=load_resnet_weights,
    pretrained_stats=IMAGENET_STATS,
)
def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    model = tv_resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
