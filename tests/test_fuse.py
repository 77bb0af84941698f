"""Batch norm folded into the convolution before it (models/fuse.py): the same function on a copy, or no fold."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

from robaudit.models.fuse import fold_batchnorm, folded
from robaudit.models.normalize import Normalized


def _with_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters, as after training (fresh ones fold to almost nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def _grad(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    out = net(x)
    return torch.autograd.grad(out[:, 0].sum() - out[:, 1].sum(), x)[0]


def test_timm_lite0_folds_every_batch_norm_with_the_same_logits_and_input_gradient():
    net = _with_stats(timm.create_model("tf_efficientnet_lite0", num_classes=2))
    model = Normalized(net, (0.5,) * 3, (0.5,) * 3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fast, n = fold_batchnorm(model, x[:2])
    assert n == n_bn == 49 and fast is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        want, got = model(x), fast(x)
    assert torch.allclose(want, got, atol=1e-4, rtol=1e-4) and want.abs().max() > 1e-2
    assert torch.allclose(_grad(model, x), _grad(fast, x), atol=1e-5, rtol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model untouched


def test_torchvision_resnet_folds_plain_batch_norms():
    model = _with_stats(torchvision.models.resnet18(num_classes=3))
    fast = folded(model, 3, 32, "cpu")
    assert fast is not model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 0
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), fast(x), atol=1e-4, rtol=1e-4)


class _PreNormSkip(nn.Module):
    """The convolution's output is used twice: by the batch norm and by a skip around it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.head((self.bn(h) + h).mean((2, 3)))


class _OddNorm(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_a_fold_that_would_change_the_function_is_not_made():
    x = torch.rand(2, 3, 16, 16)
    shared = _with_stats(_PreNormSkip())
    assert fold_batchnorm(shared, x) == (shared, 0)  # the probe saw the logits change: the fold is refused
    odd = _with_stats(nn.Sequential(nn.Conv2d(3, 4, 3), _OddNorm(4), nn.Flatten(), nn.LazyLinear(2)))
    odd(x)
    assert fold_batchnorm(odd, x) == (odd, 0)  # a subclass whose forward does more: left alone
    training = _with_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).train()
    assert fold_batchnorm(training, x) == (training, 0)  # batch statistics: not an affine map
