"""Batch-norm folding (patchbank.backbones.batchnorm_folding): same outputs, no batch norm left, unsafe pairs refused."""
import torch
from torch import nn

from patchbank.backbones import create_backbone
from patchbank.backbones.batchnorm_folding import fold_batchnorm


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so folding has something to do."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def _n_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_fold_matches_unfolded_conv_bn_relu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)).eval()
    _randomise_bn(net)
    x = torch.randn(2, 3, 16, 16)
    folded, n = fold_batchnorm(net, x)
    assert n == 2 and _n_bn(folded) == 0 and _n_bn(net) == 2       # the original is untouched
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    # by hand for the first channel of the first conv: gamma (conv - mu) / sqrt(var + eps) + beta
    conv, bn = net[0], net[1]
    with torch.inference_mode():
        ref = (conv(x) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
            bn.running_var.view(1, -1, 1, 1) + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(folded[0](x), ref, rtol=1e-5, atol=1e-5)


class _Misordered(nn.Module):
    """The BatchNorm is registered right after conv_a but runs after conv_b."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv_b = nn.Conv2d(6, 6, 1)

    def forward(self, x):
        return self.bn(self.conv_b(self.conv_a(x)))


def test_fold_refuses_when_registration_order_is_not_execution_order():
    net = _Misordered().eval()
    _randomise_bn(net)
    x = torch.randn(1, 3, 8, 8)
    folded, n = fold_batchnorm(net, x)
    assert n == 0 and folded is net


def test_backbones_fold_every_batchnorm_and_keep_their_outputs():
    x = torch.rand(2, 3, 64, 64)
    for name in ("efficientnet_lite0", "resnet18"):
        bb = create_backbone(name, "random")
        assert bb.folded_batchnorms > 0 and _n_bn(bb) == 0, name
    # against an unfolded copy with non-trivial statistics (timm's BatchNormAct2d keeps its ReLU6)
    import patchbank.backbones.registry as registry
    real = registry.fold_batchnorm
    try:
        registry.fold_batchnorm = lambda m, p: (m, 0)
        plain = create_backbone("efficientnet_lite0", "random")
    finally:
        registry.fold_batchnorm = real
    _randomise_bn(plain, seed=3)
    folded, n = fold_batchnorm(plain, x)
    assert n == _n_bn(plain) > 0
    with torch.inference_mode():
        for a, b in zip(folded(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_folded_parameters_are_ordinary_tensors_usable_outside_inference_mode():
    # Parameters made inside inference mode and then moved to a GPU outside it keep no version
    # counter; cuDNN's convolution then raised "Inference tensors do not track version counter"
    # (a backbone built on cuda outside inference mode, found on an H200).  The fold makes them
    # under no_grad, so the copy runs in and out of inference mode, on any device.
    bb = create_backbone("efficientnet_lite0", "random", context=1)
    assert bb.folded_batchnorms > 0
    assert not any(t.is_inference() for t in list(bb.parameters()) + list(bb.buffers()))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        plain = bb(x)
    with torch.inference_mode():
        inference = bb(x)
    for a, b in zip(plain, inference):
        assert torch.equal(a, b)
    if torch.cuda.is_available():
        gpu = create_backbone("efficientnet_lite0", "random", device="cuda")
        with torch.inference_mode():
            gpu(x.cuda())
