"""The numba-compiled kernels of :mod:`._kernels` (imported only when a chunk is large enough to need them:
importing numba and loading the cached machine code costs about a second per process)."""

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _row_topk(vals, k, topv, topi):
    """Top-k of one row into topv/topi (descending value, ties by lower index); returns how many."""
    m = 0
    for j in range(vals.shape[0]):
        x = vals[j]
        if m < k:
            pos = m
            m += 1
        elif x > topv[k - 1]:
            pos = k - 1
        else:
            continue
        while pos > 0 and topv[pos - 1] < x:  # equal values stay ahead: the lower index wins
            topv[pos] = topv[pos - 1]
            topi[pos] = topi[pos - 1]
            pos -= 1
        topv[pos] = x
        topi[pos] = j
    return m

@njit(cache=True, nogil=True)
def _row_mscs(bits, lut, gap, members, bsum, bcnt, keys):
    """Minimal sufficient set of one row of CE float16 bits: writes indices into ``members``, returns
    how many. ``gap`` = runner-up logit minus (bias + sum of the negative entries), ``> 0``."""
    d = bits.shape[0]
    for b in range(256):
        bsum[b] = 0.0
        bcnt[b] = 0
    for j in range(d):
        w = bits[j]
        if w == 0 or w >= 0x8000:  # zero or negative (negative zero included)
            continue
        hb = w >> 8
        bsum[hb] += lut[w]
        bcnt[hb] += 1
    cum = 0.0
    cut = -1  # the bucket where the running sum reaches the gap
    for hb in range(255, -1, -1):
        if bcnt[hb] == 0:
            continue
        if cum + bsum[hb] >= gap:
            cut = hb
            break
        cum += bsum[hb]
    n = 0
    if cut < 0:  # never reached: every positive entry
        for j in range(d):
            w = bits[j]
            if w != 0 and w < 0x8000:
                members[n] = j
                n += 1
        return n
    m = 0
    for j in range(d):
        w = bits[j]
        if w == 0 or w >= 0x8000:
            continue
        hb = w >> 8
        if hb > cut:
            members[n] = j
            n += 1
        elif hb == cut:
            keys[m] = (np.uint32(0xFFFF - w) << np.uint32(16)) | np.uint32(j)  # descending value, then index
            m += 1
    part = np.sort(keys[:m])
    for i in range(m):
        j = int(part[i] & np.uint32(0xFFFF))
        members[n] = j
        n += 1
        cum += lut[bits[j]]
        if cum >= gap:
            break
    return n

@njit(cache=True, parallel=True)
def _topk_chunk(vbits, cbits, lut, labels, correct, logits, pred, bias, k, C, do_mscs, count, sums, mcount, msize, peak):
    n, d = vbits.shape
    T = count.shape[0]
    for t in prange(T):
        lo = n * t // T
        hi = n * (t + 1) // T
        topv = np.empty(k, dtype=np.float32)
        topi = np.empty(k, dtype=np.int64)
        members = np.empty(d, dtype=np.int64)
        bsum = np.empty(256, dtype=np.float64)
        bcnt = np.empty(256, dtype=np.int64)
        keys = np.empty(d, dtype=np.uint32)
        vals = np.empty(d, dtype=np.float32)
        top = 0.0
        for r in range(lo, hi):
            c = labels[r]
            side = 0 if correct[r] else 1
            for j in range(d):
                x = lut[vbits[r, j]]
                vals[j] = x
                sums[t, side, c, j] += x
                top = max(top, abs(x))
            m = _row_topk(vals, k, topv, topi)
            for i in range(m):
                count[t, c, topi[i]] += 1
            if do_mscs:
                # minimal_sets' gap: runner-up logit - (bias + the negative entries), all exact in float64
                runner = -np.inf
                for q in range(logits.shape[1]):
                    if q != pred[r] and logits[r, q] > runner:
                        runner = logits[r, q]
                neg = 0.0
                for j in range(d):
                    w = cbits[r, j]
                    if w > 0x8000:
                        neg += lut[w]
                gap = runner - (bias[r] + neg)
                if gap > 0:
                    m = _row_mscs(cbits[r], lut, gap, members, bsum, bcnt, keys)
                    for i in range(m):
                        mcount[t, c, members[i]] += 1
                    msize[t, c] += m
        peak[t] = top
