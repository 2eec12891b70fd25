"""The ``@cuda.jit`` kernels of nbxent: one body for every row operation.

``row_kernel(variant)`` builds (and memoises) the kernel for one ``Variant``:
cross-entropy loss and/or gradient, logsumexp, log_softmax, softmax or
entropy, in one of three layouts chosen by the number of classes C:

* ``warp``: a group of ``group`` <= 32 lanes per row, several rows per block;
  the group reduces with butterfly shuffles. ``group == 1`` (a thread per row)
  serves class-not-last layouts such as NCHW, where neighbouring rows are
  neighbours in memory.
* ``block``: a whole block per row; warps reduce with shuffles, then across
  warps through shared memory.
* ``split``: a row cut into column chunks over ``gridDim.x`` blocks (very
  large C, few rows). Phase ``stats`` writes each chunk's online-softmax
  partial; the last chunk of a row to finish combines them in chunk order.
  Phase ``apply`` (a second launch) writes the gradient / normalised row.

Every array argument is a flat 1-D view of the caller's memory, addressed with
the element offsets and strides in ``dims``; the float scalars travel in
``coef`` (see ``DIMS`` and ``COEF``). One pass over a row computes the running
max, the rescaled sum of exponentials and the linear sums the loss needs; each
thread keeps its logits of the row in registers (``Variant.cache`` per thread),
so when a row fits, the gradient pass reads no logits from memory again.
"""

import math
from functools import lru_cache
from typing import NamedTuple

from numba import cuda, float32, float64, int64

from ._sim import log, shfl_xor4

#: Names of the integer launch arguments, in the order of the ``dims`` tuple.
DIMS = ("n_rows", "n_classes", "inner", "group", "chunk_cols", "n_chunks",
        "lg_off", "lg_s0", "lg_s1", "lg_s2", "tg_off", "tg_s0", "tg_s1", "tg_s2",
        "w_off", "w_s", "go_off", "go_s0", "go_s2", "out_off", "out_s0", "out_s1", "out_s2",
        "loss_s", "ignore_index", "chunk_base", "rowc_base")
#: Names of the float launch arguments (accumulation dtype), in ``coef`` order.
COEF = ("eps", "eps_over_c", "z_loss", "softcap", "inv_softcap", "grad_scale",
        "is_mean", "inv_rows", "log_output")

#: Kernel operations; log_softmax is ``softmax`` with the launch argument log_output = 1.
OPS = ("cross_entropy", "logsumexp", "softmax", "entropy")
LAYOUTS = ("warp", "block", "split")

# acc_ws holds [D, n_valid] (denominator kernel), then 4 reduction partials per
# block, then (split) 4 online-softmax partials per (row, chunk) and ROW_COEFS row
# coefficients per row. int_ws holds [error, blocks done, chunks done per row].
SLOT_BASE = 2
ROW_COEFS = 5
ERROR, BLOCKS_DONE, CHUNKS_DONE = 0, 1, 2


class Variant(NamedTuple):
    """Compile-time flags of one kernel; everything else is a launch argument."""
    op: str = "cross_entropy"
    layout: str = "warp"
    phase: str = "fused"          # "fused" (warp/block), "stats" or "apply" (split)
    acc64: bool = False           # accumulate in float64 (float64 logits)
    target: str = "index"         # "index", "prob" or "none"
    has_weight: bool = False
    softcap: bool = False
    want_loss: bool = True
    want_grad: bool = False
    reduce: bool = False          # 'sum'/'mean': the loss is finished on the device
    has_grad_output: bool = False
    denom_on_device: bool = False  # 'mean' gradient of index targets: D from acc_ws[0:2]
    cache: int = 16               # logits per thread kept in registers

    @property
    def name(self):
        parts = [self.op, self.layout]
        if self.phase != "fused":
            parts.append(self.phase)
        if self.op == "cross_entropy":
            parts.append(self.target)
            parts += [flag for flag in ("has_weight", "softcap", "want_loss", "want_grad",
                                        "reduce", "has_grad_output", "denom_on_device")
                      if getattr(self, flag)]
        elif self.reduce:
            parts.append("reduce")
        parts.append(f"k{self.cache}")
        return "-".join(parts)


_INT64_MAX = 2**63 - 1


@cuda.jit(device=True, inline="always")
def class_index(value):
    """A target element as an int64 class index. A uint64 value from 2**63 on would
    wrap to a negative number (a negative ignore_index, even): it becomes int64's
    largest value instead, out of range like the value itself."""
    t = int64(value)
    return int64(_INT64_MAX) if t < 0 and value > 0 else t


@lru_cache(maxsize=None)
def _tools(acc64):
    """Inline device helpers for one accumulation dtype (typed constants, no f64 leaks)."""
    acc = float64 if acc64 else float32
    zero, one = acc(0.0), acc(1.0)

    @cuda.jit(device=True, inline="always")
    def rescale(m_old, m_new):
        """exp(m_old - m_new); 1 when equal, so a -inf max keeps a zero sum zero."""
        if m_old == m_new:
            return one
        return math.exp(m_old - m_new)

    @cuda.jit(device=True, inline="always")
    def block_sum4(a, b, c, d):
        """Sums of four values over the block, in a fixed order; valid in thread 0.

        Butterfly shuffles within each warp, then thread 0 adds the warp totals
        in warp order. Every thread of the block must call it.
        """
        offset = 16
        while offset > 0:
            a2, b2, c2, d2 = shfl_xor4(a, b, c, d, offset)
            a += a2
            b += b2
            c += c2
            d += d2
            offset //= 2
        warp_sums = cuda.shared.array(128, acc)
        warp_id = cuda.threadIdx.x // 32
        if cuda.threadIdx.x % 32 == 0:
            warp_sums[4 * warp_id] = a
            warp_sums[4 * warp_id + 1] = b
            warp_sums[4 * warp_id + 2] = c
            warp_sums[4 * warp_id + 3] = d
        cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            for w in range(1, cuda.blockDim.x // 32):
                a += warp_sums[4 * w]
                b += warp_sums[4 * w + 1]
                c += warp_sums[4 * w + 2]
                d += warp_sums[4 * w + 3]
        cuda.syncthreads()
        return a, b, c, d

    @cuda.jit(device=True, inline="always")
    def finish_blocks(acc_ws, int_ws, a, b, c, d):
        """Store this block's four partial sums; True in every thread of the last block.

        The last block to finish (an atomic counter after a fence) is the one that
        may read every block's slot. Every thread of the block must call it.
        """
        n_blocks = cuda.gridDim.x * cuda.gridDim.y
        slot = SLOT_BASE + 4 * (cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x)
        a, b, c, d = block_sum4(a, b, c, d)
        is_last = cuda.shared.array(1, int64)
        if cuda.threadIdx.x == 0:
            acc_ws[slot] = a
            acc_ws[slot + 1] = b
            acc_ws[slot + 2] = c
            acc_ws[slot + 3] = d
            cuda.threadfence()
            done = cuda.atomic.add(int_ws, BLOCKS_DONE, 1)
            is_last[0] = 1 if done == n_blocks - 1 else 0
        cuda.syncthreads()
        last = is_last[0] == 1
        if last:
            cuda.threadfence()
        return last

    @cuda.jit(device=True, inline="always")
    def sum_slots(acc_ws):
        """Totals of every block's four partials, in a fixed order; valid in thread 0."""
        a = b = c = d = zero
        for block in range(cuda.threadIdx.x, cuda.gridDim.x * cuda.gridDim.y, cuda.blockDim.x):
            slot = SLOT_BASE + 4 * block
            a += acc_ws[slot]
            b += acc_ws[slot + 1]
            c += acc_ws[slot + 2]
            d += acc_ws[slot + 3]
        return block_sum4(a, b, c, d)

    return rescale, block_sum4, finish_blocks, sum_slots


@lru_cache(maxsize=None)
def row_kernel(variant):
    """The kernel for ``variant`` (see the module docstring), compiled lazily per dtype."""
    v = variant
    acc = float64 if v.acc64 else float32
    zero, one, two = acc(0.0), acc(1.0), acc(2.0)
    neg_inf, nan = acc(-math.inf), acc(math.nan)
    rescale, block_sum4, finish_blocks, sum_slots = _tools(v.acc64)
    K = v.cache
    is_ce = v.op == "cross_entropy"
    is_entropy = v.op == "entropy"
    is_softmax = v.op == "softmax"
    is_logsumexp = v.op == "logsumexp"
    index_target = is_ce and v.target == "index"
    prob_target = is_ce and v.target == "prob"
    has_weight = is_ce and v.has_weight
    softcap_on = is_ce and v.softcap
    has_grad_output = is_ce and v.has_grad_output
    denom_on_device = v.denom_on_device
    block_group = v.layout != "warp"
    split = v.layout == "split"
    do_stats = v.phase in ("fused", "stats")
    do_apply = v.phase in ("fused", "apply") and ((is_ce and v.want_grad) or is_softmax)
    store_row_coefs = split and v.phase == "stats" and ((is_ce and v.want_grad) or is_softmax)
    row_output = v.op in ("logsumexp", "entropy") or (is_ce and v.want_loss)
    write_rows = do_stats and row_output and not v.reduce
    reduce = do_stats and row_output and v.reduce
    use_cache = v.phase == "fused"

    @cuda.jit(device=True, inline="always")
    def load_x(logits, index, softcap, inv_softcap):
        """One logit in the accumulation dtype, soft-capped when the variant caps."""
        x = acc(logits[index])
        if softcap_on:
            x = softcap * math.tanh(x * inv_softcap)
        return x

    @cuda.jit(device=True, inline="always")
    def shift_u(u, s, m_old, m_new):
        """Entropy's u = sum e^(x-m)(x-m) re-expressed around m_new (before rescaling)."""
        if s == zero or m_old == m_new:
            return u
        return u + (m_old - m_new) * s

    @cuda.jit(device=True, inline="always")
    def combine(m, s, u, w, m2, s2, u2, w2):
        """Merge two online-softmax partials (max, sum_exp, linear sums)."""
        row_max = m2 if m2 > m else m
        scale, scale2 = rescale(m, row_max), rescale(m2, row_max)
        if is_entropy:
            u = shift_u(u, s, m, row_max) * scale + shift_u(u2, s2, m2, row_max) * scale2
        else:
            u = u + u2
        return row_max, s * scale + s2 * scale2, u, w + w2

    @cuda.jit(device=True, inline="always")
    def group_reduce(m, s, u, w, group, lane32, warp_id):
        """Combine the partials of a row's lanes; every lane gets the same result.

        A butterfly over ``min(group, 32)`` lanes (commutative, so bitwise
        identical in every lane); block layouts then merge the warps in warp
        order through shared memory. Every thread of the block must call it.
        """
        offset = (group if group < 32 else 32) // 2
        while offset > 0:
            m2, s2, u2, w2 = shfl_xor4(m, s, u, w, offset)
            m, s, u, w = combine(m, s, u, w, m2, s2, u2, w2)
            offset //= 2
        if block_group:
            warp_stats = cuda.shared.array(128, acc)
            if lane32 == 0:
                warp_stats[4 * warp_id] = m
                warp_stats[4 * warp_id + 1] = s
                warp_stats[4 * warp_id + 2] = u
                warp_stats[4 * warp_id + 3] = w
            cuda.syncthreads()
            m, s, u, w = warp_stats[0], warp_stats[1], warp_stats[2], warp_stats[3]
            for other in range(1, cuda.blockDim.x // 32):
                m, s, u, w = combine(m, s, u, w, warp_stats[4 * other], warp_stats[4 * other + 1],
                                     warp_stats[4 * other + 2], warp_stats[4 * other + 3])
            cuda.syncthreads()
        return m, s, u, w

    @cuda.jit(device=True, inline="always")
    def smooth_q(target, tg_at, weight, w_at, eps, eps_over_c):
        """The target-distribution weight of one class, without the index target's own term."""
        w_c = acc(weight[w_at]) if has_weight else one
        if prob_target:
            return ((one - eps) * acc(target[tg_at]) + eps_over_c) * w_c
        return eps_over_c * w_c

    @cuda.jit(device=True, inline="always")
    def row_stats(logits, target, weight, lg_base, lg_s1, tg_base, tg_s1, w_off, w_s,
                  c_first, c_end, step, ref, coef, cache):
        """One thread's online-softmax partial over columns c_first, c_first+step, ... < c_end.

        Returns (row_max, sum_exp, u, w): sum_exp = sum exp(x - row_max); for
        cross-entropy u = sum q_c (x_c - ref) and w = sum q_c over the smoothing /
        probability target weights q; for entropy u = sum exp(x - row_max)(x - row_max).
        Loads K logits before using them (bytes in flight), leaving them in ``cache``.
        """
        eps, eps_over_c, softcap, inv_softcap = coef[0], coef[1], coef[3], coef[4]
        linear_sums = prob_target or (index_target and eps > zero)
        row_max = neg_inf
        sum_exp = u = w = zero
        for base in range(c_first, c_end, step * K):
            chunk_max = neg_inf
            for k in range(K):
                c = base + k * step
                x = neg_inf
                if c < c_end:
                    x = load_x(logits, lg_base + c * lg_s1, softcap, inv_softcap)
                cache[k] = x
                if x > chunk_max:
                    chunk_max = x
            new_max = chunk_max if chunk_max > row_max else row_max
            scale = rescale(row_max, new_max)
            if is_entropy:
                u = shift_u(u, sum_exp, row_max, new_max) * scale
            sum_exp *= scale
            row_max = new_max
            for k in range(K):
                c = base + k * step
                if c < c_end:
                    x = cache[k]
                    # exp(-inf - -inf) is nan: a -inf logit adds exactly nothing. The
                    # logsumexp op counts a +inf max as e = 1 (torch: logsumexp = +inf);
                    # cross-entropy keeps exp(inf - inf) = nan, as torch's loss does.
                    if x == neg_inf:
                        e = zero
                    elif is_logsumexp and x == row_max:
                        e = one
                    else:
                        e = math.exp(x - row_max)
                    sum_exp += e
                    if is_entropy:
                        if e != zero:
                            u += e * (x - row_max)
                    elif linear_sums:
                        q = smooth_q(target, tg_base + c * tg_s1, weight, w_off + c * w_s,
                                     eps, eps_over_c)
                        u += q * (x - ref)
                        w += q
        return row_max, sum_exp, u, w

    @cuda.jit(device=True, inline="always")
    def apply_row(logits, target, weight, out, lg_base, lg_s1, tg_base, tg_s1, w_off, w_s,
                  out_base, out_s1, c_first, c_end, step, cached, row_max, log_sum, cp, cq,
                  tq, t, ignored, coef, cache):
        """Write one thread's columns of the gradient, softmax or log_softmax row.

        Cross-entropy: grad_j = (cp * p_j - cq * q_j - tq * [j == t]) * cap'(x_j),
        with p = softmax(x) = exp((x - row_max) - log_sum) (not x - lse: lse rounds at
        the logits' magnitude); exactly 0 for ignored rows (an out-of-range index
        carries cp = nan). ``cached`` rows come from
        the registers filled by ``row_stats``; others are read again.
        """
        eps, eps_over_c, softcap, inv_softcap = coef[0], coef[1], coef[3], coef[4]
        smooth = prob_target or (index_target and eps > zero)
        for base in range(c_first, c_end, step * K):
            for k in range(K):
                c = base + k * step
                if c < c_end:
                    x = cache[k] if cached else load_x(logits, lg_base + c * lg_s1,
                                                       softcap, inv_softcap)
                    shifted = (x - row_max) - log_sum
                    if is_softmax:
                        value = shifted if coef[8] > zero else math.exp(shifted)
                    elif not ignored:
                        value = cp * math.exp(shifted)
                        if smooth:
                            value -= cq * smooth_q(target, tg_base + c * tg_s1, weight,
                                                   w_off + c * w_s, eps, eps_over_c)
                        if index_target and c == t:
                            value -= tq
                        if softcap_on:
                            value *= one - (x * inv_softcap) * (x * inv_softcap)
                    else:
                        value = zero
                    out[out_base + c * out_s1] = value

    @cuda.jit
    def kernel(logits, target, weight, grad_output, loss, out, acc_ws, int_ws, dims, coef):
        """Rows of one operation (``variant``); see the module docstring.

        Layout: logits element (o, c, i) of row r = o * inner + i at
        lg_off + o*lg_s0 + c*lg_s1 + i*lg_s2 (likewise target, out). Threads:
        groups of ``group`` lanes per row (warp), the block per row (block), or
        the block per (chunk = blockIdx.x, row) (split); rows grid-stride.
        """
        (n_rows, n_classes, inner, group, chunk_cols, n_chunks, lg_off, lg_s0, lg_s1, lg_s2,
         tg_off, tg_s0, tg_s1, tg_s2, w_off, w_s, go_off, go_s0, go_s2, out_off, out_s0,
         out_s1, out_s2, loss_s, ignore_index, chunk_base, rowc_base) = dims
        eps, eps_over_c, z_loss = coef[0], coef[1], coef[2]
        grad_scale, is_mean, inv_rows = coef[5], coef[6], coef[7]
        tid = cuda.threadIdx.x
        lane32 = tid % 32
        warp_id = tid // 32
        lane = tid % group
        group_id = tid // group
        if split:
            chunk = cuda.blockIdx.x
            c_begin = chunk * chunk_cols
            c_end = min(n_classes, c_begin + chunk_cols)
            first_row = cuda.blockIdx.y
            row_step = cuda.gridDim.y
        else:
            chunk = 0
            c_begin = 0
            c_end = n_classes
            first_row = cuda.blockIdx.x * (cuda.blockDim.x // group)
            row_step = cuda.gridDim.x * (cuda.blockDim.x // group)
        cached = use_cache and c_end - c_begin <= group * K
        inv_d = inv_n = inv_rows
        if denom_on_device:
            inv_d = one / acc_ws[0]
            inv_n = one / acc_ws[1]
        row_done_flag = cuda.shared.array(1, int64)
        cache = cuda.local.array(K, acc)
        part_ce = part_d = part_z = part_n = zero
        for block_row in range(first_row, n_rows, row_step):
            row = block_row + group_id
            active = row < n_rows
            o = row // inner
            i = row - o * inner
            lg_base = lg_off + o * lg_s0 + i * lg_s2
            tg_base = tg_off + o * tg_s0 + i * tg_s2
            t = int64(0)
            valid = True
            if index_target and active:
                t = class_index(target[tg_base])
                valid = t != ignore_index
            in_range = t >= 0 and t < n_classes
            counted = valid and in_range
            row_max = log_sum = cp = cq = tq = zero
            row_done = active
            if do_stats:
                softcap, inv_softcap = coef[3], coef[4]
                # Linear sums are taken relative to the row's first logit, so that
                # sum_q * lse - sum_q * x does not cancel when logits are large.
                ref = zero
                target_logit = zero
                if active:
                    ref = load_x(logits, lg_base, softcap, inv_softcap)
                    if not (ref > neg_inf and ref < -neg_inf):
                        ref = zero
                    # Read before any lane writes: with out=logits the row is overwritten.
                    if index_target and counted:
                        target_logit = load_x(logits, lg_base + t * lg_s1, softcap, inv_softcap)
                row_max, sum_exp, u, w = neg_inf, zero, zero, zero
                if active:
                    row_max, sum_exp, u, w = row_stats(
                        logits, target, weight, lg_base, lg_s1, tg_base, tg_s1, w_off, w_s,
                        c_begin + lane, c_end, group, ref, coef, cache)
                row_max, sum_exp, u, w = group_reduce(row_max, sum_exp, u, w, group, lane32,
                                                      warp_id)
                if split:
                    part = chunk_base + 4 * (row * n_chunks + chunk)
                    if tid == 0 and active:
                        acc_ws[part] = row_max
                        acc_ws[part + 1] = sum_exp
                        acc_ws[part + 2] = u
                        acc_ws[part + 3] = w
                        cuda.threadfence()
                        done = cuda.atomic.add(int_ws, CHUNKS_DONE + row, 1)
                        row_done_flag[0] = 1 if done == n_chunks - 1 else 0
                    cuda.syncthreads()
                    row_done = active and row_done_flag[0] == 1
                    if row_done:
                        cuda.threadfence()
                        part = chunk_base + 4 * row * n_chunks
                        row_max, sum_exp, u, w = (acc_ws[part], acc_ws[part + 1],
                                                  acc_ws[part + 2], acc_ws[part + 3])
                        for other in range(1, n_chunks):
                            part = chunk_base + 4 * (row * n_chunks + other)
                            row_max, sum_exp, u, w = combine(
                                row_max, sum_exp, u, w, acc_ws[part], acc_ws[part + 1],
                                acc_ws[part + 2], acc_ws[part + 3])
                    cuda.syncthreads()
                if row_done:
                    log_sum = log(sum_exp)
                    lse = row_max + log_sum
                    lse_ref = (row_max - ref) + log_sum
                    value = lse
                    z_value = zero
                    row_d = row_n = one
                    if is_entropy:
                        value = log_sum - u / sum_exp
                    elif is_ce:
                        g = grad_scale
                        if has_grad_output:
                            g *= acc(grad_output[go_off + o * go_s0 + i * go_s2])
                        g_ce, g_z = g * inv_d, g * inv_n
                        cq = g_ce
                        if not index_target:
                            value = w * lse_ref - u
                            cp = g_ce * w
                        elif counted:
                            w_t = acc(weight[w_off + t * w_s]) if has_weight else one
                            target_weight = (one - eps) * w_t
                            value = target_weight * ((row_max - target_logit) + log_sum)
                            weight_sum = target_weight
                            if eps > zero:  # u, w already carry the eps / C factor
                                value += w * lse_ref - u
                                weight_sum += w
                            row_d = w_t
                            tq = g_ce * target_weight
                            cp = g_ce * weight_sum
                        else:
                            # ignored: loss and gradient exactly 0; out of range: nan + error flag
                            value = zero if not valid else nan
                            cp = nan
                            row_d = row_n = zero
                            if valid and lane == 0:
                                cuda.atomic.max(int_ws, ERROR, n_rows - row)
                        if z_loss > zero and counted:
                            z_value = lse * lse
                            cp += two * z_loss * g_z * lse
                    if lane == 0:
                        if write_rows:
                            loss[row * loss_s] = value + z_loss * z_value if is_ce else value
                        if reduce:
                            part_ce += value
                            part_z += z_value
                            part_d += row_d
                            part_n += row_n
                        if store_row_coefs:
                            coefs = rowc_base + ROW_COEFS * row
                            acc_ws[coefs] = row_max
                            acc_ws[coefs + 1] = log_sum
                            acc_ws[coefs + 2] = cp
                            acc_ws[coefs + 3] = cq
                            acc_ws[coefs + 4] = tq
            if do_apply and active:
                if not do_stats:
                    coefs = rowc_base + ROW_COEFS * row
                    row_max, log_sum = acc_ws[coefs], acc_ws[coefs + 1]
                    cp, cq, tq = acc_ws[coefs + 2], acc_ws[coefs + 3], acc_ws[coefs + 4]
                apply_row(logits, target, weight, out, lg_base, lg_s1, tg_base, tg_s1, w_off,
                          w_s, out_off + o * out_s0 + i * out_s2, out_s1, c_begin + lane, c_end,
                          group, cached, row_max, log_sum, cp, cq, tq, t, not valid, coef,
                          cache)
        if reduce:
            if finish_blocks(acc_ws, int_ws, part_ce, part_d, part_z, part_n):
                ce_sum, d_sum, z_sum, n_sum = sum_slots(acc_ws)
                if tid == 0:
                    total = ce_sum / d_sum if is_mean > zero else ce_sum
                    if z_loss > zero:
                        total += z_loss * (z_sum / n_sum if is_mean > zero else z_sum)
                    loss[0] = total

    return kernel


@lru_cache(maxsize=None)
def denominator_kernel(acc64, has_weight):
    """Kernel for the 'mean' denominators of index targets, and the index check.

    One block (launch it with grid 1); threads stride over the (outer, inner)
    target rows and write acc_ws[0] = sum of w_t over the counted rows (D) and
    acc_ws[1] = their number, summed in a fixed order; an index outside [0, C)
    that is not ignore_index sets the error flag as the row kernel does.
    """
    acc = float64 if acc64 else float32
    zero, one = acc(0.0), acc(1.0)
    _, block_sum4, _, _ = _tools(acc64)

    @cuda.jit
    def kernel(target, weight, acc_ws, int_ws, dims):
        """acc_ws[0:2] = (D, n_valid) over the targets (one block; threads stride rows)."""
        (n_rows, n_classes, inner, tg_off, tg_s0, tg_s2, w_off, w_s, ignore_index) = dims
        d_sum = n_sum = zero
        for row in range(cuda.threadIdx.x, n_rows, cuda.blockDim.x):
            o = row // inner
            t = class_index(target[tg_off + o * tg_s0 + (row - o * inner) * tg_s2])
            if t != ignore_index:
                if t >= 0 and t < n_classes:
                    d_sum += acc(weight[w_off + t * w_s]) if has_weight else one
                    n_sum += one
                else:
                    cuda.atomic.max(int_ws, ERROR, n_rows - row)
        d_sum, n_sum, _, _ = block_sum4(d_sum, n_sum, zero, zero)
        if cuda.threadIdx.x == 0:
            acc_ws[0] = d_sum
            acc_ws[1] = n_sum

    return kernel


@lru_cache(maxsize=None)
def copy_kernel(ndim):
    """Kernel copying a strided ``ndim``-D view into a C-contiguous 1-D buffer."""

    @cuda.jit
    def kernel(src, dst, shape, strides, offset):
        """dst[flat] = src[offset + sum(index_d * strides_d)]; a thread per element, grid-stride."""
        for flat in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
            rest = flat
            at = offset
            for d in range(ndim - 1, -1, -1):
                at += (rest % shape[d]) * strides[d]
                rest //= shape[d]
            dst[flat] = src[at]

    return kernel


def _variants():
    """Every compile-time-distinct kernel the backend launches, as (name, Variant).

    The launched flag sets are subsets of these: per layout and phase, the
    cross-entropy variants switch on every feature (weights, soft cap, gradient,
    grad_output, device denominators), once with per-row and once with reduced
    output, so compiling them compiles every code path and bounds the registers.
    """
    out = []
    full = dict(has_weight=True, softcap=True, want_grad=True, has_grad_output=True)
    for layout, phase, cache in (("warp", "fused", 16), ("block", "fused", 16),
                                 ("split", "stats", 16), ("split", "apply", 16)):
        common = dict(layout=layout, phase=phase, cache=cache)
        out += [Variant(op="cross_entropy", target="index", **full, **common),
                Variant(op="cross_entropy", target="prob", reduce=True, **full, **common),
                Variant(op="softmax", target="none", want_loss=False, **common)]
        if phase != "apply":
            out += [Variant(op="cross_entropy", target="index", reduce=True,
                            denom_on_device=True, **full, **common),
                    Variant(op="logsumexp", target="none", **common),
                    Variant(op="entropy", target="none", reduce=True, **common)]
    return [(v.name, v) for v in out]


#: Every kernel variant the backend launches (name, Variant), for the PTX check.
VARIANTS = _variants()
