"""The timm-free EfficientNet-Lite network equals timm's tf_efficientnet_lite{0,2}: the same
parameter names, order and shapes, the same outputs with the same weights (odd input sizes too,
where TensorFlow's SAME padding is asymmetric), and building the default backbone imports
neither timm nor torchvision."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from patchbank.backbones import efficientnet_lite
from patchbank.backbones import weights as weight_files
from patchbank.backbones.efficientnet_lite_net import ARCHS, EfficientNetLite, SameConv2d
from patchbank.backbones.precision import full_float32_convolutions

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _packaged_pair(name: str):
    """(ours, timm's) with the packaged weights of ``name``, both in eval mode."""
    path = efficientnet_lite.packaged_lite_file(name)
    arch = efficientnet_lite.LITE[name].arch
    load = lambda make: weight_files.instantiate(make, weight_files.read_state_dict(path), path, name,  # noqa: E731
                                                 efficientnet_lite.pair_lite_keys).eval()
    return load(lambda: EfficientNetLite(arch)), load(lambda: timm.create_model(arch, pretrained=False))


def _seeded_pair(arch: str, device: str):
    """(ours, timm's) with one seeded random state (batch-norm statistics and affine
    parameters randomised too), on ``device``, eval mode: runs where no weights are packaged."""
    torch.manual_seed(0)
    theirs = timm.create_model(arch, pretrained=False)
    state = theirs.state_dict()
    for k, v in state.items():
        if k.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight")):
            state[k] = torch.rand_like(v) + 0.5
        elif k.endswith(("running_mean", ".bias")) and v.is_floating_point():
            state[k] = torch.randn_like(v) * 0.1
    theirs.load_state_dict(state)
    ours = EfficientNetLite(arch)
    ours.load_state_dict(state)
    return ours.to(device).eval(), theirs.to(device).eval()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_same_parameter_names_order_and_shapes_as_timm(arch):
    ours = EfficientNetLite(arch).state_dict()
    theirs = timm.create_model(arch, pretrained=False).state_dict()
    assert list(ours) == list(theirs)
    assert [tuple(t.shape) for t in ours.values()] == [tuple(t.shape) for t in theirs.values()]


def _close(a, b):
    """Equal up to float32 rounding: ~8 ulps of the larger tensor's largest value (a strided
    block pads before its 1 x 1 expansion, whose rounding in NCHW depends on the map's size)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(b.abs().max())))


def _same_outputs(ours, theirs, device="cpu"):
    """Full float32 convolutions, as the extractor runs the backbone: in cuDNN's default TF32
    (~1e-3 relative) the two networks' different order of padding and expansion rounds apart
    (logits 0.009 apart on an H200, session 23)."""
    torch.manual_seed(0)
    for size in [(64, 64), (67, 80), (33, 45)]:   # even and odd sizes: asymmetric SAME padding
        x = torch.randn(2, 3, *size).to(device)
        with torch.inference_mode(), full_float32_convolutions():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
            a, b = ours.stem()(x), theirs.bn1(theirs.conv_stem(x))
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            for sa, sb in zip(ours.blocks, theirs.blocks):
                a, b = sa(a), sb(b)
                _close(a, b)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_same_outputs_as_timm_with_the_packaged_weights(name):
    _same_outputs(*_packaged_pair(name))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_same_outputs_as_timm_with_seeded_weights(arch, device):
    _same_outputs(*_seeded_pair(arch, device), device)


def test_sensible_imagenet_prediction():
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    ours, _ = _packaged_pair("efficientnet_lite2")
    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224))
    x = (torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        assert ours(x[None]).argmax(-1).item() == 652   # ImageNet "military uniform"


@pytest.mark.parametrize("size,stride,kernel", [(7, 2, 3), (8, 2, 3), (9, 2, 5), (10, 2, 5), (6, 1, 5)])
def test_same_padding_gives_ceil_size_with_the_extra_pixel_at_the_end(size, stride, kernel):
    conv = SameConv2d(1, 1, kernel, stride)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, kernel // 2, kernel // 2] = 1.0     # the centre tap: picks one input pixel
    x = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size) + 1
    out = conv(x)
    n = -(-size // stride)
    assert out.shape[-2:] == (n, n)
    total = max((n - 1) * stride + kernel - size, 0)
    first = kernel // 2 - total // 2           # input index of the first output's centre tap
    idx = [first + i * stride for i in range(n)]
    want = torch.zeros(n, n)
    for i, r in enumerate(idx):
        for j, c in enumerate(idx):
            if 0 <= r < size and 0 <= c < size:
                want[i, j] = x[0, 0, r, c]
    torch.testing.assert_close(out[0, 0], want)


def test_building_the_default_backbone_imports_neither_timm_nor_torchvision():
    code = ("import sys; from patchbank.backbones import create_backbone; "
            "create_backbone('efficientnet_lite2'); "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("size", [(8, 8), (9, 12), (7, 5)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_strided_block_pads_before_its_expansion_with_the_same_result(size, kernel):
    # a strided inverted residual pads its narrow input, expands it, and zeroes the band again:
    # the same as expanding, then padding the expanded map (the band must be zero, not ReLU6 of
    # the bias, which the random biases make large); in the channels-last layout the feature
    # extractor runs, bit for bit
    from patchbank.backbones.efficientnet_lite_net import InvertedResidual, same_padding

    torch.manual_seed(kernel)
    block = InvertedResidual(4, 8, kernel, 2, 6).eval()
    for name, t in block.state_dict().items():
        if t.is_floating_point():
            t.copy_(torch.rand_like(t) + 0.5 if name.endswith(("running_var", "weight")) else torch.randn_like(t))
    x = torch.randn(2, 4, *size)
    with torch.inference_mode():
        def reference(x):
            y = block.act1(block.bn1(block.conv_pw(x)))
            y = block.act2(block.bn2(block.conv_dw(y)))    # SameConv2d pads the expanded map
            return block.bn3(block.conv_pwl(y))

        want = reference(x)
        assert want.shape[-2:] == (-(-size[0] // 2), -(-size[1] // 2))
        _close(block(x), want)
        band = block.padded_expansion(x)
        left, right, top, bottom = same_padding(size, (kernel, kernel), (2, 2))
        assert band.shape[-2:] == (size[0] + top + bottom, size[1] + left + right)
        outside = band.clone()
        outside[:, :, top:top + size[0], left:left + size[1]] = 0
        assert not outside.any() and band.any()                              # zero outside the input
        block.to(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(block(xl), reference(xl))
