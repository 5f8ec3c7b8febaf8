"""What the Numba intrinsics share: declaring an LLVM intrinsic in the module being compiled."""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils


def llvm_function(builder, name: str, ret, *params):
    """The declaration of LLVM intrinsic ``name`` (``ret name(*params)``) in the module ``builder`` fills."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, list(params)), name)
