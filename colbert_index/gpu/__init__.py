"""The GPU path (docs/gpu.md): :mod:`.device` opens an index on a torch device and runs its searches there,
:mod:`.search` holds the batched device stages, :mod:`.build` builds on a GPU. Nothing here is imported until
a device is asked for."""
