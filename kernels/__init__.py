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
