"""What the Numba intrinsics share: declaring an LLVM intrinsic in the module being compiled, and what the CPU
Numba compiles for can run.

Numba compiles for ``NUMBA_CPU_NAME`` with ``NUMBA_CPU_FEATURES`` when they are set, else for the host (and
with the CPU name alone, still with the host's features). An intrinsic of an instruction set the target lacks
stops LLVM with a fatal error, so the kernels that emit one are chosen by :func:`target_isa`, which asks LLVM
about that same target, never by the host's CPU flags alone (docs/design-notes.md).
"""

from __future__ import annotations

import re
from functools import cache

import numba
from llvmlite import binding, ir
from numba.core import cgutils, codegen


def llvm_function(builder, name: str, ret, *params):
    """The declaration of LLVM intrinsic ``name`` (``ret name(*params)``) in the module ``builder`` fills."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, list(params)), name)


_AVX2_PROBE = """
define <8 x i32> @probe(<8 x i32> %a, <8 x i32> %b) {
  %c = add <8 x i32> %a, %b
  ret <8 x i32> %c
}
"""
_VNNI_PROBE = """
declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)
define <8 x i32> @probe(<8 x i32> %c, <16 x i16> %a, <16 x i16> %b) {
  %p = call <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16> %a, <16 x i16> %b)
  %r = add <8 x i32> %c, %p
  ret <8 x i32> %r
}
"""


def _target_machine():
    """The target machine Numba's JIT compiles for: its own where it exposes it, else one built as it builds it
    (``numba.core.codegen.JITCPUCodegen``: the CPU name, and the feature string or the host's features)."""
    tm = getattr(numba.core.registry.cpu_target.target_context.codegen(), "_tm", None)
    if tm is None:  # pragma: no cover - depends on Numba's internals
        cpu = numba.config.CPU_NAME or binding.get_host_cpu_name()
        feats = numba.config.CPU_FEATURES
        feats = codegen.get_host_cpu_features() if feats is None else feats
        tm = binding.Target.from_default_triple().create_target_machine(cpu=cpu, features=feats)
    return tm


def _assembly(tm, source: str) -> str:
    module = binding.parse_assembly(source)
    module.verify()
    return tm.emit_assembly(module)


@cache
def target_isa() -> frozenset[str]:
    """What Numba's target CPU runs of the vector instructions the int8 kernels use: ``"avx2"`` (256-bit integer
    vectors: ``vpmaddubsw``, ``vpmaddwd``) and ``"vnni"`` (256-bit ``vpdpbusd``: AVX512-VNNI with VL, or
    AVX-VNNI). Asked of LLVM for that target: an add of ``<8 x i32>`` is one ``vpaddd`` on ymm registers only
    with AVX2, and an add of ``vpmaddwd`` becomes ``vpdpwssd`` (same feature as ``vpdpbusd``) only with VNNI.
    Empty on other CPUs (ARM included)."""
    if not binding.get_default_triple().startswith(("x86_64", "i386", "i686")):
        return frozenset()
    tm = _target_machine()
    if not re.search(r"vpaddd\s+%ymm\d+, %ymm\d+, %ymm\d+", _assembly(tm, _AVX2_PROBE)):
        return frozenset()
    found = {"avx2"}
    if re.search(r"vpdpwssd\s+%ymm", _assembly(tm, _VNNI_PROBE)):
        found.add("vnni")
    return frozenset(found)


_HALF_PROBE = """
define float @probe(i16 %h) {
  %x = bitcast i16 %h to half
  %f = fpext half %x to float
  ret float %f
}
"""


@cache
def half_in_hardware() -> bool:
    """Whether Numba's target CPU converts float16 to float32 in one instruction (x86 with F16C: ``vcvtph2ps``;
    ARMv8: ``fcvt``), asked of LLVM as :func:`target_isa` asks: elsewhere LLVM would call a runtime function
    that Numba's JIT may not find."""
    asm = _assembly(_target_machine(), _HALF_PROBE)
    return "cvtph2ps" in asm or re.search(r"fcvt\s+s\d+,\s*h\d+", asm) is not None
