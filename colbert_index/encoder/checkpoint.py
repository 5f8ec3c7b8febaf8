"""Reading local ColBERT checkpoints: file checks, format detection, settings, projection layers.

Two formats are understood:

- **sentence-transformers / PyLate** (mxbai-edge-colbert, GTE-ModernColBERT, answerai-colbert): ``modules.json``
  lists a Transformer module and one or more Dense modules (each a folder with ``config.json`` and weights);
  ``config_sentence_transformers.json`` holds PyLate's settings (prefixes, lengths, query expansion, skiplist).
- **Stanford ColBERT** (colbertv2.0): a BERT checkpoint whose weights also hold ``linear.weight``, with the
  settings in ``artifact.metadata``.

Nothing here downloads anything: a missing file raises :class:`FileNotFoundError` naming it.
"""

from __future__ import annotations

import importlib
import json
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path

DOWNLOAD_HINT = (
    "Encoder.from_pretrained reads a local directory only: download the checkpoint beforehand "
    "(e.g. `huggingface-cli download ORG/NAME --local-dir DIR`, or `git clone` with git-lfs) and pass DIR."
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")

# PyLate's defaults for settings a checkpoint leaves out (pylate.models.ColBERT.__init__).
PYLATE_DEFAULTS = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 32,
    "document_length": 180,
    "do_query_expansion": True,
    "attend_to_expansion_tokens": False,
}
# Stanford ColBERT's defaults (colbert.infra.config.settings), used when artifact.metadata omits a field.
STANFORD_DEFAULTS = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_maxlen": 32,
    "doc_maxlen": 180,
    "mask_punctuation": True,
    "attend_to_mask_tokens": False,
}


@dataclass
class Dense:
    """One projection layer: ``activation(x @ weight.T + bias)`` (+ ``x @ residual.T`` or ``x``, PyLate's option)."""

    weight: object  # torch.Tensor [out, in]
    bias: object | None = None
    activation: object | None = None  # a torch module/callable; None is the identity
    residual: object | None = None  # torch.Tensor [out, in] when use_residual and in != out
    use_residual: bool = False

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x):
        import torch.nn.functional as F

        y = F.linear(x, self.weight, self.bias)
        if self.activation is not None:
            y = self.activation(y)
        if self.use_residual:
            y = y + (x if self.residual is None else F.linear(x, self.residual))
        return y

    def to(self, device, dtype=None):
        for name in ("weight", "bias", "residual"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device=device, dtype=dtype or t.dtype))
        return self


@dataclass
class CheckpointSpec:
    """Everything :class:`~colbert_index.encoder.Encoder` needs to know about a checkpoint, read from its files."""

    format: str  # "pylate" or "stanford"
    path: Path
    transformer_dir: Path
    dense: list[Dense]
    query_prefix: str  # a token ("[Q] ", "[unused0]"), inserted after the first special token; "" for none
    document_prefix: str
    query_length: int  # counts every token: special tokens, the prefix and [MASK] expansion tokens
    document_length: int
    do_query_expansion: bool  # pad queries to query_length with [MASK] tokens, all of which are kept
    attend_to_expansion_tokens: bool
    skiplist_words: list[str] = field(default_factory=list)
    do_lower_case: bool = False
    prompt: str = ""  # sentence-transformers default prompt, prepended to every text

    @property
    def dim(self) -> int:
        return self.dense[-1].out_features


# ---------------------------------------------------------------------------------------------- files
def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: {path}. {DOWNLOAD_HINT}")


def _check_not_lfs_pointer(path: Path) -> None:
    if path.stat().st_size < 1024 and path.read_bytes().startswith(b"version https://git-lfs"):
        raise FileNotFoundError(
            f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in that checkout. {DOWNLOAD_HINT}"
        )


def weight_files(directory: Path, what: str) -> list[Path]:
    """The weight files of a module directory: one file, or the shards a ``*.index.json`` lists."""
    for name in _WEIGHT_FILES:
        p = directory / name
        if p.is_file():
            _check_not_lfs_pointer(p)
            return [p]
    for name in _SHARD_INDEXES:
        p = directory / name
        if p.is_file():
            shards = sorted(set(_read_json(p)["weight_map"].values()))
            for shard in shards:
                if not (directory / shard).is_file():
                    raise _missing(directory / shard, f"weight shard of {what} (listed in {name})")
                _check_not_lfs_pointer(directory / shard)
            return [directory / s for s in shards]
    raise _missing(directory / _WEIGHT_FILES[0], f"weights of {what} ({' or '.join(_WEIGHT_FILES)})")


def read_tensors(files: list[Path], keys: set[str] | None = None) -> dict:
    """Tensors from safetensors / PyTorch weight files (all of them, or only ``keys``)."""
    import torch

    out = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt", device="cpu") as st:
                for k in st.keys():
                    if keys is None or k in keys:
                        out[k] = st.get_tensor(k)
        else:
            state = torch.load(f, map_location="cpu", weights_only=True)
            out.update({k: v for k, v in state.items() if keys is None or k in keys})
    return out


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _check_transformer_dir(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise _missing(directory / "config.json", "transformer config")
    weight_files(directory, "the transformer")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise _missing(directory / "tokenizer.json", f"tokenizer (one of {', '.join(_TOKENIZER_FILES)})")


# ---------------------------------------------------------------------------------------------- formats
def read_checkpoint(path) -> CheckpointSpec:
    """Detect the format of the checkpoint directory ``path`` and read its settings and projection layers."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {path}. {DOWNLOAD_HINT}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; pass the checkpoint directory. {DOWNLOAD_HINT}")
    if (path / "modules.json").is_file():
        return _read_sentence_transformers(path)
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    if (path / "artifact.metadata").is_file() or "HF_ColBERT" in (config.get("architectures") or []):
        return _read_stanford(path)
    raise FileNotFoundError(
        f"{path} holds neither modules.json (sentence-transformers / PyLate format) nor artifact.metadata "
        f"(Stanford ColBERT format). {DOWNLOAD_HINT}"
    )


def _activation(name: str | None):
    """Instantiate a Dense activation the way PyLate does: only ``torch.*`` classes are trusted."""
    if not name or name in ("torch.nn.modules.linear.Identity", "torch.nn.Identity"):
        return None
    if not name.startswith("torch."):
        msg = f"Dense activation {name!r} is not a torch class: using the identity, as PyLate does"
        warnings.warn(msg, stacklevel=3)
        return None
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)()
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load the Dense activation {name!r}: {e}") from None


def _read_dense(directory: Path) -> Dense:
    if not (directory / "config.json").is_file():
        raise _missing(directory / "config.json", "Dense module config")
    cfg = _read_json(directory / "config.json")
    t = read_tensors(weight_files(directory, f"Dense module {directory.name}"))
    if "linear.weight" not in t:
        raise ValueError(f"{directory}: the Dense weights hold no 'linear.weight' (keys: {sorted(t)})")
    layer = Dense(
        weight=t["linear.weight"].float(),
        bias=t["linear.bias"].float() if "linear.bias" in t else None,
        activation=_activation(cfg.get("activation_function")),
        residual=t["residual.weight"].float() if "residual.weight" in t else None,
        use_residual=bool(cfg.get("use_residual", False)),
    )
    expect = (cfg.get("out_features", layer.out_features), cfg.get("in_features", layer.in_features))
    if tuple(layer.weight.shape) != tuple(expect):
        raise ValueError(f"{directory}: linear.weight has shape {tuple(layer.weight.shape)}, config says {expect}")
    if cfg.get("bias", layer.bias is not None) != (layer.bias is not None):
        raise ValueError(f"{directory}: config says bias={cfg['bias']}, the weights disagree ('linear.bias')")
    if layer.use_residual and layer.residual is None and layer.in_features != layer.out_features:
        raise ValueError(f"{directory}: use_residual with in != out features needs 'residual.weight'")
    return layer


def _read_sentence_transformers(path: Path) -> CheckpointSpec:
    modules = _read_json(path / "modules.json")
    transformer_dir, dense = None, []
    for m in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = m.get("type", "").rsplit(".", 1)[-1]
        module_dir = path / m.get("path", "")
        if kind == "Transformer":
            if transformer_dir is not None:
                raise ValueError(f"{path}/modules.json lists more than one Transformer module")
            transformer_dir = module_dir
        elif kind == "Dense":
            if transformer_dir is None:
                raise ValueError(f"{path}/modules.json: a Dense module comes before the Transformer")
            dense.append(_read_dense(module_dir))
        elif kind not in ("Pooling", "Normalize"):  # PyLate keeps only Transformer and Dense modules
            warnings.warn(f"{path}/modules.json: ignoring module {m.get('name')} of type {m.get('type')}", stacklevel=3)
    if transformer_dir is None:
        raise ValueError(f"{path}/modules.json lists no Transformer module")
    _check_transformer_dir(transformer_dir)
    if not dense:
        raise ValueError(
            f"{path} has no Dense projection module: it is a single-vector sentence-transformers model, not a "
            "ColBERT checkpoint (PyLate would add an untrained projection)"
        )
    st_config = path / "config_sentence_transformers.json"
    cfg = _read_json(st_config) if st_config.is_file() else {}
    settings = {k: cfg[k] if cfg.get(k) is not None else v for k, v in PYLATE_DEFAULTS.items()}
    bert_config = transformer_dir / "sentence_bert_config.json"
    st_module = _read_json(bert_config) if bert_config.is_file() else {}
    skiplist = cfg.get("skiplist_words")
    prompt_name = cfg.get("default_prompt_name")
    prompt = (cfg.get("prompts") or {}).get(prompt_name, "") if prompt_name else ""
    return CheckpointSpec(
        format="pylate",
        path=path,
        transformer_dir=transformer_dir,
        dense=dense,
        query_prefix=settings["query_prefix"],
        document_prefix=settings["document_prefix"],
        query_length=int(settings["query_length"]),
        document_length=int(settings["document_length"]),
        do_query_expansion=bool(settings["do_query_expansion"]),
        # PyLate never attends to expansion tokens when it does not expand queries.
        attend_to_expansion_tokens=bool(settings["attend_to_expansion_tokens"] and settings["do_query_expansion"]),
        skiplist_words=list(string.punctuation if skiplist is None else skiplist),
        do_lower_case=bool(st_module.get("do_lower_case", False)),
        prompt=prompt,
    )


def _read_stanford(path: Path) -> CheckpointSpec:
    _check_transformer_dir(path)
    meta_path = path / "artifact.metadata"
    if meta_path.is_file():
        meta = _read_json(meta_path)
    else:
        warnings.warn(f"{path}: no artifact.metadata; using Stanford ColBERT's default settings", stacklevel=3)
        meta = {}
    meta = {k: meta[k] if meta.get(k) is not None else v for k, v in STANFORD_DEFAULTS.items()} | {
        "dim": meta.get("dim")
    }
    t = read_tensors(weight_files(path, "the Stanford ColBERT checkpoint"), keys={"linear.weight"})
    if "linear.weight" not in t:
        raise ValueError(f"{path}: a Stanford ColBERT checkpoint needs 'linear.weight' in its weights; none found")
    layer = Dense(weight=t["linear.weight"].float())
    if meta["dim"] is not None and int(meta["dim"]) != layer.out_features:
        raise ValueError(f"{path}: artifact.metadata says dim {meta['dim']}, linear.weight has {layer.out_features}")
    return CheckpointSpec(
        format="stanford",
        path=path,
        transformer_dir=path,
        dense=[layer],
        query_prefix=meta["query_token_id"],
        document_prefix=meta["doc_token_id"],
        query_length=int(meta["query_maxlen"]),
        document_length=int(meta["doc_maxlen"]),
        do_query_expansion=True,  # Stanford ColBERT always pads queries with [MASK] and keeps them all
        attend_to_expansion_tokens=bool(meta["attend_to_mask_tokens"]),
        skiplist_words=list(string.punctuation) if meta["mask_punctuation"] else [],
    )
