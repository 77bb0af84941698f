"""A user's own network for the API tests: not in timm or torchvision, 1-channel input, its own mean/std.

Importable as ``greynet:GreyNet`` (tests/ is on sys.path under pytest), so a checkpoint of it loads in the
CLI with ``--arch greynet:GreyNet`` exactly as a live instance is handed to ``ra.Model``."""

from __future__ import annotations

import torch
from torch import nn

MEAN, STD = (0.45,), (0.22,)


class GreyNet(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x normalised: (pixels - MEAN) / STD
        return self.head(self.features(x))


def train_greynet(x: torch.Tensor, y: torch.Tensor, epochs: int = 6, seed: int = 0) -> GreyNet:
    """A few epochs of Adam on (N, 1, H, W) images in [0, 1]: a real, better-than-chance classifier."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = GreyNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xn = (x - MEAN[0]) / STD[0]
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xn[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def xray_cnn(size: int = 32, task: str = "pneumonia-mini", limit: int | None = None):
    """The README's small CNN, three epochs on the 800 embedded training X-rays (mean 0.5, std 0.25, a few
    seconds), or on ``limit`` training images of ``task``: (net, classes). Shared by the harm and threat-model
    tests."""
    import robaudit as ra

    xray = ra.load_data(task)
    x_tr, y_tr = xray.tensors("train", size=size, limit=limit)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for i in torch.randperm(len(x_tr)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net((x_tr[i] - 0.5) / 0.25), y_tr[i]).backward()
            opt.step()
    return net, xray.classes
