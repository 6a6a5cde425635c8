"""The tutorial recipes imgclf replaces, re-implemented faithfully for the benchmarks.

Each keeps its tutorial's network, optimizer, batch size, epochs and input pipeline: a torchvision
dataset-style object that hands out PIL images, per-image ``transforms`` and a ``DataLoader``, except
the "apparels" recipe, which (like its tutorial) trains full-batch on one tensor. Decoding the files is
not timed (the tutorials' datasets come decoded); only training is, like imgclf's ``train_seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imgclf.models import create_model


@dataclass
class Outcome:
    accuracy: float
    train_seconds: float
    images_seen: int


class PILDataset(Dataset):
    """What torchvision's MNIST/CIFAR10 classes do: one uint8 array per image, a PIL image per access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        array = images.permute(0, 2, 3, 1).numpy()
        self.images = array[..., 0] if array.shape[-1] == 1 else array
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def _train_loop(model, loader, optimizer, epochs: int) -> tuple[float, int]:
    criterion = nn.CrossEntropyLoss()
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            seen += len(y)
    return time.perf_counter() - start, seen


def mnist_cnn(train, test, epochs: int = 2) -> Outcome:
    """The MNIST CNN tutorial: 2 conv layers (16/32 5x5 filters), Adam lr 0.001, batch 100, ToTensor +
    Normalize((0.1307,), (0.3081,)), a shuffled DataLoader."""
    transform = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
    loader = DataLoader(PILDataset(*train, transform), batch_size=100, shuffle=True)
    model = create_model("cnn2", 1, 10, 28)
    seconds, seen = _train_loop(model, loader, torch.optim.Adam(model.parameters(), lr=0.001), epochs)
    return Outcome(_accuracy(model, DataLoader(PILDataset(*test, transform), batch_size=1000)), seconds, seen)


class ApparelNet(nn.Module):
    """The "identify the apparels" tutorial network: two 4-filter 3x3 conv + batch norm + pool blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn_layers = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=1, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(4, 4, 3, stride=1, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self.linear_layers = nn.Sequential(nn.Linear(4 * 7 * 7, 10))

    def forward(self, x):
        return self.linear_layers(self.cnn_layers(x).view(x.size(0), -1))


def fashion_apparels(train, test, epochs: int = 25) -> Outcome:
    """The apparels tutorial: pixels / 255 as one float tensor, Adam lr 0.07, 25 full-batch epochs
    (one optimizer step per epoch on the whole training set), cross-entropy."""
    x_train, y_train = train[0].float() / 255, train[1]
    model = ApparelNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.07)
    criterion = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        loss = criterion(model(x_train), y_train)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x.float() / 255).argmax(1) for x in test[0].split(2000)])
    return Outcome((predictions == test[1]).float().mean().item(), seconds, epochs * len(y_train))


def cifar_lenet(train, test, epochs: int = 10) -> Outcome:
    """The PyTorch "Training a classifier" tutorial: LeNet (6/16 filters, 120-84 FC), SGD lr 0.001
    momentum 0.9, batch 4, ToTensor + Normalize(0.5, 0.5), DataLoader with 2 workers."""
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    loader = DataLoader(PILDataset(*train, transform), batch_size=4, shuffle=True, num_workers=2)
    model = create_model("lenet5", 3, 10, 32)
    seconds, seen = _train_loop(model, loader, torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9), epochs)
    test_loader = DataLoader(PILDataset(*test, transform), batch_size=4, num_workers=2)
    return Outcome(_accuracy(model, test_loader), seconds, seen)


def cifar_resnet18(train, test, epochs: int = 10, device: str = "cuda") -> Outcome:
    """The ResNet-18 transfer-learning tutorial's recipe trained from scratch: torchvision resnet18,
    SGD lr 0.001 momentum 0.9, batch 64, random flip, ToTensor + Normalize, DataLoader with 4 workers."""
    transform = T.Compose(
        [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    test_transform = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).to(device)
    return _device_recipe(
        model,
        train,
        test,
        transform,
        test_transform,
        64,
        4,
        torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9),
        epochs,
        device,
    )


def cifar_cnn4(train, test, epochs: int = 8, device: str = "cuda") -> Outcome:
    """The 4-conv CIFAR-10 tutorial CNN with dropout, as the PyTorch port of the tutorial trains it: Adam lr 0.001, batch 32."""
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    model = create_model("cnn4", 3, 10, 32).to(device)
    return _device_recipe(
        model, train, test, transform, transform, 32, 4, torch.optim.Adam(model.parameters(), lr=0.001), epochs, device
    )


def _device_recipe(model, train, test, transform, test_transform, batch, workers, optimizer, epochs, device) -> Outcome:
    loader = DataLoader(
        PILDataset(*train, transform), batch_size=batch, shuffle=True, num_workers=workers, pin_memory=True
    )
    criterion = nn.CrossEntropyLoss()
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
            seen += len(y)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(PILDataset(*test, test_transform), batch_size=500, num_workers=workers):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return Outcome(correct / len(test[1]), seconds, seen)


def folder_epoch(root, batch_size: int = 128, workers: int = 2) -> tuple[float, int]:
    """One pass of torchvision's ImageFolder + PIL + ToTensor through a DataLoader: what a tutorial
    does with a folder of photos every epoch (seconds, images)."""
    import torchvision

    dataset = torchvision.datasets.ImageFolder(
        str(root), transform=T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    )
    start, seen = time.perf_counter(), 0
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers):
        seen += len(x)
    return time.perf_counter() - start, seen


def per_image_predict(model: nn.Module, images: torch.Tensor, mean, std, batch_size: int = 256) -> float:
    """The tutorials' inference: PIL image -> ToTensor -> Normalize per image, batched by a DataLoader.
    Returns images per second."""
    transform = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    loader = DataLoader(
        PILDataset(images, torch.zeros(len(images), dtype=torch.long), transform), batch_size=batch_size
    )
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            model(x).softmax(1)
    return len(images) / (time.perf_counter() - start)
