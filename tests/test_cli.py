"""The colbert-index command line: build and search from .npy files, errors as exit code 2."""

from __future__ import annotations

import numpy as np
import torch

from colbert_index import Index, SearchParams
from colbert_index.cli import main


def test_build_then_search(tmp_path, tiny_docs, capsys):
    np.save(tmp_path / "emb.npy", np.concatenate(tiny_docs))
    np.save(tmp_path / "lens.npy", np.array([len(d) for d in tiny_docs]))
    (tmp_path / "ids.txt").write_text("".join(f"doc{i}\n" for i in range(len(tiny_docs))))
    np.save(tmp_path / "q.npy", tiny_docs[6][:4])
    args = ["build", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "emb.npy")]
    assert main([*args, "--doclens", str(tmp_path / "lens.npy"), "--ids", str(tmp_path / "ids.txt")]) == 0
    assert "bytes/token" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "3"]) == 0
    first = capsys.readouterr().out.split("\t")[0]
    assert first.startswith("doc6:")
    assert main(["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "--exact"]) == 0
    assert capsys.readouterr().out.startswith("doc6:")
    bound = ["--nbound", "5", "--bound-cells", "4"]  # the opt-in stage 1 bound, as SearchParams takes it
    assert main(["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "3", *bound]) == 0
    got = [hit.split(":")[0] for hit in capsys.readouterr().out.split()]
    params = SearchParams(nbound=5, bound_cells=4)
    assert got == list(Index.open(tmp_path / "idx").search(tiny_docs[6][:4], k=3, params=params).ids[0])
    assert main(["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "--nbound", "0"]) == 2
    assert "nbound must be >= 1" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "--bound-cells", "-1"]) == 2
    assert "bound_cells must be >= 0" in capsys.readouterr().err


def test_errors_exit_2(tmp_path, tiny_docs, capsys):
    np.save(tmp_path / "emb.npy", np.concatenate(tiny_docs))
    np.save(tmp_path / "lens.npy", np.array([len(d) for d in tiny_docs]))
    build = ["build", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "emb.npy"), "--doclens"]
    assert main([*build, str(tmp_path / "lens.npy"), "--build-device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*build, str(tmp_path / "lens.npy"), "--build-device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
    np.save(tmp_path / "q.npy", np.zeros((3, 5), np.float32))
    assert main(["search", str(tmp_path / "nope"), "--queries", str(tmp_path / "q.npy")]) == 2
    assert "no index directory" in capsys.readouterr().err
