# LLVM's ldexp in a Numba loop (tried for exp's scaling): it vectorises into vscalefps on
# AVX-512, after converting the float exponent to an integer and back. RESULTS.md, first section.
import os
import numpy as np, re
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from nbxent.cpu.fastexp import _reduced32, exp_polynomial32, negative_floor32
from nbxent.cpu.bits import bitcast

@intrinsic
def ldexp32(typingctx, p, k):
    sig = types.float32(types.float32, types.int32)
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType(), ir.IntType(32)])
        fn = builder.module.globals.get("llvm.ldexp.f32.i32") or ir.Function(builder.module, fnty, "llvm.ldexp.f32.i32")
        return builder.call(fn, args)
    return sig, codegen

@njit(inline="always")
def exp_s(x):
    k, r, kb = _reduced32(x, False)
    p = exp_polynomial32(r)
    return ldexp32(p, np.int32(k))

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
@njit(fastmath=FM, error_model="numpy")
def total(x, shift):
    s = np.float32(0)
    for i in range(x.size):
        s += exp_s(negative_floor32(x[i] - shift))
    return s

x = np.random.randn(1000).astype(np.float32)
print(total(x, np.float32(3.0)), np.exp(x.astype(np.float64) - 3).sum())
asm = total.inspect_asm(total.signatures[0])
print("vscalef" in asm, len(re.findall("vscalefps\s+zmm", asm)), len(re.findall("vscalefss", asm)))
print(len(re.findall("zmm", asm)), len(re.findall("ymm", asm)), len(re.findall("xmm", asm))); print("vscalefps lines:", asm.count("vscalefps"), "conversions:", asm.count("vcvttps2dq"), asm.count("vcvtdq2ps"))
