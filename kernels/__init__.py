"""Kernels: numpy references (`reference`) and Numba CPU versions (`numba_*`) with the same contracts;
for the device pipeline, Triton GPU versions (`triton_scoring`) and a torch fallback (`torch_scoring`) on
torch tensors, with batched (many queries x their own candidates) variants. Only importing
`triton_scoring` imports triton.

Shared conventions
------------------
* A document collection is CSR: ``codes[n_tokens]`` (centroid ids), ``packed[n_tokens, dim*nbits//8]``
  (residual bucket indices, bits packed MSB-first, first dimension in the highest bits of byte 0) and
  ``offsets[n_docs + 1]`` (int64, token range of doc ``d`` is ``offsets[d]:offsets[d+1]``).
* A token decompresses to ``centroids[code] + bucket_weights[j, bucket_j]`` for each dimension ``j``.
* Candidate lists are int32/int64 arrays of document slots; scores come back float32 in the same order.
"""

if __name__ == "kernels":
    # Installed, this folder is `colbert_index.kernels`; it is imported as `kernels` only when the repository root
    # is on sys.path (`python -m ...` run there), where it would shadow the PyPI package `kernels` that recent
    # transformers import. Hand that import the installed package instead.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
