"""The :class:`Encoder`: texts -> L2-normalised ColBERT token embeddings from a local checkpoint.

Token handling follows PyLate (``pylate.models.ColBERT.tokenize`` / ``encode``) exactly, so that a
PyLate-format checkpoint gives the vectors PyLate gives (bench/fidelity_pylate.py checks it):

- the text is stripped (and lower-cased when the Transformer module says ``do_lower_case``), tokenized, and
  truncated so that the whole sequence, special tokens and prefix included, fits ``document_length`` /
  ``query_length``;
- the prefix token ("[D] ", "[Q] ", or Stanford's "[unused1]" / "[unused0]") is inserted right after the
  first token ([CLS]);
- documents keep every token ([CLS], the prefix, [SEP] included) except padding and the skiplist
  (punctuation by default); queries with expansion are padded to ``query_length`` with [MASK] and keep
  every position; without expansion they keep their real tokens;
- after the Transformer, the Dense layers run in order, then each kept token is L2-normalised.

Stanford ColBERT checkpoints tokenize the same way ('. ' + text with the '.' replaced by the marker is the
same sequence for WordPiece tokenizers), always expand queries, and mask punctuation if the metadata says so.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from tqdm.auto import tqdm

from colbert_index.backend import get_backend
from colbert_index.encoder.checkpoint import CheckpointSpec, read_checkpoint
from colbert_index.pooling import check_pool_factor, pool_tokens

_EXTRA_HINT = 'the Encoder needs the "text" extra: pip install "colbert_index[text]" (transformers, safetensors)'


def _check_texts(texts, what: str) -> list[str]:
    """A non-empty list of non-empty strings, or a clear TypeError / ValueError."""
    if texts is None:
        raise TypeError(f"{what}: expected a list of strings, got None")
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what}: expected a list of strings, got a single {type(texts).__name__}; wrap it: [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{what}: expected a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError(f"{what}: the list of texts is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}: text {i} is {type(t).__name__}, not str")
        if not t.strip():
            raise ValueError(f"{what}: text {i} is empty (or only whitespace)")
    return texts


def merge_windows(embeddings: list[np.ndarray], window_doc: np.ndarray) -> list[np.ndarray]:
    """Concatenate the window embeddings of each document: ``encode_documents(..., windows=True)`` output ->
    one ``[n_i, dim]`` array per input text, for ``Index.build`` with one id per document.

    MaxSim against the union of a document's windows takes, for each query token, the best match in any window.
    """
    window_doc = np.asarray(window_doc)
    if len(window_doc) != len(embeddings) or (len(window_doc) and (np.diff(window_doc) < 0).any()):
        raise ValueError("window_doc must give, in order, the document of each window")
    bounds = np.flatnonzero(np.diff(window_doc, prepend=-1, append=np.iinfo(np.int64).max))
    return [np.concatenate(embeddings[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _quietly(transformers, load):
    """Call ``load()`` without transformers' progress bars and warnings (a Stanford checkpoint's linear.weight
    is reported as unused), then restore both settings."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return load()
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


class Encoder:
    """Encode documents and queries with a local late-interaction checkpoint.

    >>> enc = Encoder.from_pretrained("path/to/mxbai-edge-colbert-v0-17m")  # doctest: +SKIP
    >>> docs = enc.encode_documents(["ColBERT scores with MaxSim.", "PLAID prunes candidates."])  # doctest: +SKIP
    >>> Q, lengths = enc.encode_queries(["what does PLAID do?"])  # doctest: +SKIP
    """

    def __init__(self, spec: CheckpointSpec, model, tokenizer, device, autocast_dtype=None) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.autocast_dtype = autocast_dtype
        tok = tokenizer
        self.query_prefix_id = self._prefix_id(spec.query_prefix)
        self.document_prefix_id = self._prefix_id(spec.document_prefix)
        # PyLate pads with [MASK] (so query expansion tokens are [MASK]), else EOS, else the pad token.
        pad = next((t for t in (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None), None)
        if pad is None:
            raise ValueError(f"{spec.path}: the tokenizer has no [MASK], EOS or pad token to pad and expand with")
        self.pad_id = int(pad)
        # PyLate maps each skiplist word with convert_tokens_to_ids (a word outside the vocabulary maps to [UNK]).
        self.skiplist_ids = np.unique(np.asarray(tok.convert_tokens_to_ids(spec.skiplist_words), np.int64))
        self._head, self._tail = self._special_tokens()
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        for name in ("query_length", "document_length"):
            self._check_length(getattr(spec, name), name)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        *,
        query_length: int | None = None,
        document_length: int | None = None,
        autocast: str | None = "auto",
    ) -> Encoder:
        """Load a checkpoint from the local directory ``path`` (PyLate / sentence-transformers or Stanford format).

        Args:
            device: "cpu", "cuda" or "cuda:N".
            query_length, document_length: override the checkpoint's lengths (tokens, special ones included).
            autocast: on CUDA, run the model under ``torch.autocast`` in "bf16" or "fp16" ("auto": bf16 where
                supported, else fp16; None: float32). Ignored on CPU, which always computes in float32.

        Raises FileNotFoundError naming the missing file when the directory is incomplete (nothing is downloaded).
        """
        try:
            import torch
            import transformers
        except ImportError as e:
            raise ImportError(f"{_EXTRA_HINT} ({e})") from None
        spec = read_checkpoint(path)
        if query_length is not None:
            spec.query_length = int(query_length)
        if document_length is not None:
            spec.document_length = int(document_length)
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but torch sees no CUDA device")
        if autocast not in (None, "auto", "bf16", "fp16"):
            raise ValueError(f"autocast must be 'auto', 'bf16', 'fp16' or None, got {autocast!r}")
        autocast_dtype = None
        if device.type == "cuda" and autocast is not None:
            bf16 = autocast == "bf16" or (autocast == "auto" and torch.cuda.is_bf16_supported())
            autocast_dtype = torch.bfloat16 if bf16 else torch.float16
        tdir = str(spec.transformer_dir)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tdir, local_files_only=True)
        tokenizer.model_max_length = 1 << 30  # we truncate ourselves; silences the "sequence too long" warning
        model = _quietly(transformers, lambda: transformers.AutoModel.from_pretrained(tdir, local_files_only=True))
        model = model.float().to(device).eval()  # eval(): no dropout, deterministic
        hidden = getattr(model.config, "hidden_size", None)
        if hidden is not None and spec.dense[0].in_features != hidden:
            raise ValueError(
                f"{spec.path}: the first Dense layer takes {spec.dense[0].in_features} features, "
                f"the transformer outputs {hidden}"
            )
        for a, b in zip(spec.dense, spec.dense[1:]):
            if b.in_features != a.out_features:
                raise ValueError(f"{spec.path}: Dense layers do not chain ({a.out_features} -> {b.in_features})")
        for layer in spec.dense:
            layer.to(device)
            if layer.activation is not None and hasattr(layer.activation, "to"):
                layer.activation.to(device)
        return cls(spec, model, tokenizer, device, autocast_dtype)

    def _prefix_id(self, prefix: str) -> int | None:
        if not prefix:
            return None
        tid = self.tokenizer.convert_tokens_to_ids(prefix)
        unk = self.tokenizer.unk_token_id
        if tid is None or (tid == unk and prefix != self.tokenizer.unk_token):
            raise ValueError(
                f"{self.spec.path}: the prefix token {prefix!r} is not in the tokenizer's vocabulary (PyLate saves it "
                "as an added token; a checkpoint without it was not saved by PyLate)"
            )
        n_rows = self.model.get_input_embeddings().weight.shape[0]
        if tid >= n_rows:
            raise ValueError(f"{self.spec.path}: prefix token {prefix!r} has id {tid} >= {n_rows} embedding rows")
        return int(tid)

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text (BERT / ModernBERT: [CLS], [SEP])."""
        probe = "hello world"
        bare = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        for i in range(len(full) - len(bare) + 1):
            if full[i : i + len(bare)] == bare:
                return list(full[:i]), list(full[i + len(bare) :])
        raise ValueError(f"{self.spec.path}: cannot tell the tokenizer's special tokens apart from the text")

    def _check_length(self, n: int, name: str) -> None:
        least = len(self._head) + len(self._tail) + 2  # the special tokens, a prefix and one text token
        if n < least:
            raise ValueError(f"{name} must be at least {least} (special tokens + prefix + 1), got {n}")
        if self.max_positions is not None and n > self.max_positions:
            raise ValueError(f"{name} {n} exceeds the model's {self.max_positions} positions")

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension of the token embeddings."""
        return self.spec.dim

    @property
    def query_length(self) -> int:
        return self.spec.query_length

    @property
    def document_length(self) -> int:
        return self.spec.document_length

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"Encoder({str(s.path)!r}, format={s.format}, {type(self.model).__name__}, dim={self.dim}, "
            f"query_length={s.query_length}, document_length={s.document_length}, "
            f"query_expansion={s.do_query_expansion}, device={self.device})"
        )

    # ------------------------------------------------------------------ tokenization
    def _content_ids(self, texts: list[str]) -> list[list[int]]:
        """Text token ids without special tokens (sentence-transformers strips texts, then maybe lower-cases)."""
        texts = [self.spec.prompt + t for t in texts]
        texts = [t.strip() for t in texts]
        if self.spec.do_lower_case:
            texts = [t.lower() for t in texts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _sequence(self, content: list[int], prefix_id: int | None) -> list[int]:
        ids = self._head + list(content) + self._tail
        if prefix_id is not None:  # PyLate's insert_prefix_token: right after the first token
            ids = ids[:1] + [prefix_id] + ids[1:]
        return ids

    def _budget(self, max_length: int, prefix_id: int | None) -> int:
        return max_length - len(self._head) - len(self._tail) - (prefix_id is not None)

    def _truncate(self, content: list[int], budget: int) -> list[int]:
        if len(content) <= budget:
            return content
        return content[-budget:] if self.tokenizer.truncation_side == "left" else content[:budget]

    def tokenize_documents(self, texts, max_length: int | None = None, *, windows: bool = False, overlap=None):
        """The input ids each document is encoded from (special tokens and prefix in place, truncated); with
        ``windows``, ``(ids of each window, window_doc)`` as :meth:`encode_documents` splits them."""
        out = self._document_sequences(_check_texts(texts, "documents"), max_length, windows, overlap)
        seqs, window_doc = out if windows else (out, None)
        seqs = [np.asarray(s, np.int64) for s in seqs]
        return (seqs, window_doc) if windows else seqs

    def tokenize_queries(self, texts) -> list[np.ndarray]:
        """The input ids of each query (with [MASK] expansion up to ``query_length`` when the checkpoint expands)."""
        seqs = self._query_sequences(_check_texts(texts, "queries"))
        return [np.asarray(s, np.int64) for s, _ in seqs]

    def _document_sequences(self, texts, max_length, windows=False, overlap=None):
        max_length = self.spec.document_length if max_length is None else int(max_length)
        self._check_length(max_length, "max_length")
        budget = self._budget(max_length, self.document_prefix_id)
        overlap = budget // 4 if overlap is None else int(overlap)
        if windows and not 0 <= overlap < budget:
            raise ValueError(f"overlap must be in [0, {budget}) text tokens (a window holds {budget}), got {overlap}")
        seqs, owner = [], []
        for i, content in enumerate(self._content_ids(texts)):
            if not windows or len(content) <= budget:
                seqs.append(self._sequence(self._truncate(content, budget), self.document_prefix_id))
                owner.append(i)
                continue
            start, step = 0, budget - overlap
            while True:
                seqs.append(self._sequence(content[start : start + budget], self.document_prefix_id))
                owner.append(i)
                if start + budget >= len(content):
                    break
                start += step
        return (seqs, np.asarray(owner, np.int64)) if windows else seqs

    def _query_sequences(self, texts) -> list[tuple[list[int], int]]:
        """(ids, number of real tokens) per query; with expansion, ids are padded with [MASK] to query_length."""
        n = self.spec.query_length
        budget = self._budget(n, self.query_prefix_id)
        out = []
        for content in self._content_ids(texts):
            ids = self._sequence(self._truncate(content, budget), self.query_prefix_id)
            real = len(ids)
            if self.spec.do_query_expansion:
                ids = ids + [self.pad_id] * (n - real)
            out.append((ids, real))
        return out

    # ------------------------------------------------------------------ model
    def _forward(self, batch: list[list[int]], attend: list[int]):
        """Run sequences (right-padded) through the model and the Dense layers: [B, T, dim] float32 tensor."""
        import torch

        T = max(len(s) for s in batch)
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for b, (s, a) in enumerate(zip(batch, attend)):
            ids[b, : len(s)] = torch.as_tensor(s)
            mask[b, :a] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    x = self.model(input_ids=ids, attention_mask=mask)[0]
            else:
                x = self.model(input_ids=ids, attention_mask=mask)[0]
            x = x.float()
            for layer in self.spec.dense:
                x = layer(x)
        return x

    def _run(self, seqs, attend, keep, batch_size, dtype, progress, desc):
        """Encode sequences in length-sorted batches; returns, in input order, the kept L2-normalised rows."""
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.argsort([-len(s) for s in seqs], kind="stable")  # like PyLate: longest first, little padding
        out: list[np.ndarray | None] = [None] * len(seqs)
        show = sys.stderr.isatty() if progress is None else bool(progress)
        with tqdm(total=len(seqs), desc=desc, unit="text", disable=not show) as bar:
            for lo in range(0, len(seqs), batch_size):
                idx = order[lo : lo + batch_size]
                x = self._forward([seqs[i] for i in idx], [attend[i] for i in idx])
                for row, i in enumerate(idx):
                    k = torch.as_tensor(keep[i], device=x.device)
                    v = torch.nn.functional.normalize(x[row, : len(k)][k], p=2, dim=1)
                    out[i] = v.cpu().numpy().astype(dtype, copy=False)
                bar.update(len(idx))
        return out

    # ------------------------------------------------------------------ public encoding
    def encode_documents(
        self,
        texts,
        batch_size: int = 32,
        max_length: int | None = None,
        *,
        windows: bool = False,
        overlap: int | None = None,
        dtype=np.float32,
        progress: bool | None = None,
        pool_factor: int = 1,
    ):
        """Encode documents into one ``[n_i, dim]`` array of L2-normalised token embeddings each.

        Args:
            texts: a list of non-empty strings.
            max_length: tokens per document, special tokens and prefix included (default: the checkpoint's
                ``document_length``). Longer documents are truncated, unless ``windows``.
            windows: split long documents into overlapping windows of ``max_length`` tokens instead; returns
                ``(embeddings, window_doc)`` where ``window_doc[j]`` is the index of the text window ``j`` came
                from (windows of a text are consecutive; :func:`merge_windows` joins them per text).
            overlap: text tokens shared by consecutive windows (default a quarter of a window).
            dtype: ``np.float32`` (default) or ``np.float16``.
            progress: show a progress bar (default: when stderr is a terminal).
            pool_factor: pool each document (each window) to about ``n / pool_factor`` vectors, as
                ``Index.build(pool_factor=...)`` does (:mod:`colbert_index.pooling`); 1: every token.

        Padding and skiplist tokens (punctuation by default) are dropped; [CLS], the prefix and [SEP] are kept.
        """
        texts = _check_texts(texts, "documents")
        dtype = self._check_dtype(dtype)
        if overlap is not None and not windows:
            raise ValueError("overlap applies with windows=True only")
        if windows:
            seqs, window_doc = self._document_sequences(texts, max_length, True, overlap)
        else:
            seqs = self._document_sequences(texts, max_length)
        keep = [~np.isin(np.asarray(s), self.skiplist_ids) for s in seqs]
        embs = self._run(seqs, [len(s) for s in seqs], keep, batch_size, dtype, progress, "encode documents")
        if check_pool_factor(pool_factor) > 1:
            kernels = get_backend()
            embs = [pool_tokens(e, pool_factor, kernels).astype(dtype) for e in embs]
        return (embs, window_doc) if windows else embs

    def encode_queries(
        self, texts, batch_size: int = 32, *, dtype=np.float32, progress: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode queries: returns ``(Q, lengths)``, ``Q`` a ``[n_q, q_len, dim]`` array, ``lengths`` int64 ``[n_q]``.

        With query expansion (the checkpoint's ``do_query_expansion``, always for Stanford checkpoints) every query
        has ``query_length`` tokens, [MASK] expansion tokens included. Without it, each query keeps its real tokens
        and ``Q`` is zero-padded to the longest; pass ``query_lengths=lengths`` to :meth:`Index.search`.
        """
        texts = _check_texts(texts, "queries")
        dtype = self._check_dtype(dtype)
        seqs = self._query_sequences(texts)
        attend = [len(s) if self.spec.attend_to_expansion_tokens else real for s, real in seqs]
        n_keep = [len(s) if self.spec.do_query_expansion else real for s, real in seqs]
        keep = [np.arange(len(s)) < k for (s, _), k in zip(seqs, n_keep)]
        embs = self._run([s for s, _ in seqs], attend, keep, batch_size, dtype, progress, "encode queries")
        lengths = np.asarray(n_keep, np.int64)
        Q = np.zeros((len(embs), int(lengths.max()), self.dim), dtype)
        for i, e in enumerate(embs):
            Q[i, : len(e)] = e
        return Q, lengths

    @staticmethod
    def _check_dtype(dtype):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"dtype must be float32 or float16, got {dtype}")
        return dtype


__all__ = ["Encoder", "merge_windows"]
