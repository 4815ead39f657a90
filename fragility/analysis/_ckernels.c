/* The fused per-row kernels of fragility.analysis._kernels, compiled ahead of time when the package is
 * installed (setup.py), so that no process pays a compiler or JIT load.
 *
 * Every function works on a block of rows of float16 bits (uint16) and adds into caller-owned outputs; it
 * releases the GIL, so the Python side runs one call per thread on disjoint row ranges with private outputs.
 * Exactness (docs/analyzers.md): float16 values are multiples of 2**-24, so float64 sums of them are exact
 * while below 2**29 in magnitude; each function returns the largest |value| it saw and the caller refuses
 * the results when a sum could have left that range. Buffers are checked against the sizes they must have,
 * and labels / predictions against their ranges, so a bad call is a ValueError, never a stray write.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static float LUT[65536]; /* float16 bits -> float32 value */

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ------------------------------------------------------------------ argument checking */

static int need(Py_buffer *b, Py_ssize_t bytes, const char *name) {
    if (b->len != bytes) {
        PyErr_Format(PyExc_ValueError, "_ckernels: %s has %zd bytes, %zd expected", name, b->len, bytes);
        return 0;
    }
    return 1;
}

static int in_range(const int64_t *a, Py_ssize_t n, int64_t hi, const char *name) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (a[i] < 0 || a[i] >= hi) {
            PyErr_Format(PyExc_ValueError, "_ckernels: %s[%zd] = %lld is outside [0, %lld)", name, i, (long long)a[i], (long long)hi);
            return 0;
        }
    }
    return 1;
}

/* ------------------------------------------------------------------ top-K and minimal sets */

/* float16 bits -> float32: the F16C instruction where the CPU has it (chosen once at import), else the table */
static void decode_lut(const uint16_t *bits, float *out, Py_ssize_t d) {
    for (Py_ssize_t j = 0; j < d; j++) out[j] = LUT[bits[j]];
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void decode_f16c(const uint16_t *bits, float *out, Py_ssize_t d) {
    Py_ssize_t j = 0;
    for (; j + 8 <= d; j += 8) _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(bits + j))));
    for (; j < d; j++) out[j] = LUT[bits[j]];
}
#endif

static void (*decode)(const uint16_t *, float *, Py_ssize_t) = decode_lut;

/* for a 4-bit mask: the positions of its set bits, in order (padded), and how many */
static const int32_t bits_at[16][4] = {{0}, {0}, {1}, {0, 1}, {2}, {0, 2}, {1, 2}, {0, 1, 2}, {3}, {0, 3}, {1, 3},
                                       {0, 1, 3}, {2, 3}, {0, 2, 3}, {1, 2, 3}, {0, 1, 2, 3}};
static const int ones[16] = {0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4};

/* insert vals[j] into the sorted top list (it is larger than the current k-th): equal values stay ahead */
static inline void insert(float x, Py_ssize_t j, int pos, float *topv, int64_t *topi) {
    while (pos > 0 && topv[pos - 1] < x) {
        topv[pos] = topv[pos - 1];
        topi[pos] = topi[pos - 1];
        pos--;
    }
    topv[pos] = x;
    topi[pos] = j;
}

/* offer entries in index order to a top list of m <= k: it enters while the list is short, or when it is
 * strictly above the k-th value (an equal value never displaces a lower index) */
static inline void take(float x, Py_ssize_t j, int k, int *m, float *topv, int64_t *topi) {
    if (*m < k) insert(x, j, (*m)++, topv, topi);
    else if (x > topv[k - 1]) insert(x, j, k - 1, topv, topi);
}

/* top-k of one row into topv/topi (descending value, ties: the lower index wins); returns how many.
 * First a lower bound of the k-th largest value: with nb = d / 8, the k-th largest of the nb maxima of the
 * groups {i, i + nb, ..., i + 7 nb} (they are k distinct entries). Only entries at or above it can be in
 * the top-k (ties included), and they are few, so they are found four at a time and inserted in index
 * order (strictly above the current k-th value: an equal value never displaces a lower index).
 * scratch holds d / 8 + d + 12 floats. */
static int row_topk(const float *vals, Py_ssize_t d, int k, float *topv, int64_t *topi, float *scratch) {
    int m = 0;
    Py_ssize_t nb = d / 8, j = 0;
    if (nb < 2 * k) { /* short rows: one scan */
        for (; j < d; j++) take(vals[j], j, k, &m, topv, topi);
        return m;
    }
    Py_ssize_t i = 0;
#if defined(__SSE2__)
    for (; i + 4 <= nb; i += 4) {
        __m128 a = _mm_loadu_ps(vals + i);
        for (int t = 1; t < 8; t++) a = _mm_max_ps(a, _mm_loadu_ps(vals + i + t * nb));
        _mm_storeu_ps(scratch + i, a);
    }
#endif
    for (; i < nb; i++) {
        float a = vals[i];
        for (int t = 1; t < 8; t++) a = vals[i + t * nb] > a ? vals[i + t * nb] : a;
        scratch[i] = a;
    }
    for (Py_ssize_t b = 0; b < nb; b++) { /* k-th largest group maximum, values only */
        float x = scratch[b];
        int p;
        if (m < k) p = m++;
        else if (x > topv[k - 1]) p = k - 1;
        else continue;
        while (p > 0 && topv[p - 1] < x) { topv[p] = topv[p - 1]; p--; }
        topv[p] = x;
    }
    float bound = topv[k - 1];
    m = 0;
    Py_ssize_t c = 0;
    int32_t *cand = (int32_t *)(scratch + nb + 4); /* candidate indices (d + 4 of them fit) */
#if defined(__SSE2__)
    /* the indices of the entries >= bound, four at a time without a branch: the mask's set bits, in order */
    __m128 lim = _mm_set1_ps(bound);
    for (; j + 4 <= d; j += 4) {
        int mask = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(vals + j), lim));
        _mm_storeu_si128((__m128i *)(cand + c), _mm_add_epi32(_mm_set1_epi32((int32_t)j), _mm_loadu_si128((const __m128i *)bits_at[mask])));
        c += ones[mask];
    }
#endif
    for (; j < d; j++) {
        cand[c] = (int32_t)j;
        c += vals[j] >= bound;
    }
    for (Py_ssize_t i = 0; i < c; i++) take(vals[cand[i]], cand[i], k, &m, topv, topi); /* in index order */
    return m;
}

/* Minimal sufficient set of one row of CE: indices into members, returns how many. gap = runner-up logit -
 * (bias + sum of the negative entries), > 0. Positive entries are taken in descending order (ties: lower
 * index first) until their running sum reaches gap. With exact sums only the order matters: the positive
 * entries (pos, npos of them, in index order) are bucketed by the top byte of their bits (which orders
 * positive values), whole buckets are added, and only the bucket where the sum reaches the gap is sorted. */
static Py_ssize_t row_mscs(const uint16_t *bits, const float *vals, const int32_t *pos, Py_ssize_t npos, double gap,
                           int64_t *members, uint32_t *keys) {
    double bsum[0x7C], bsum2[0x7C];
    int32_t bcnt[0x7C], bcnt2[0x7C];
    memset(bsum, 0, sizeof bsum);
    memset(bcnt, 0, sizeof bcnt);
    memset(bsum2, 0, sizeof bsum2);
    memset(bcnt2, 0, sizeof bcnt2);
    Py_ssize_t i = 0;
    for (; i + 2 <= npos; i += 2) { /* two sets of buckets: neighbours in one bucket do not wait on each other */
        int b = bits[pos[i]] >> 8, b2 = bits[pos[i + 1]] >> 8;
        bsum[b] += vals[pos[i]];
        bcnt[b]++;
        bsum2[b2] += vals[pos[i + 1]];
        bcnt2[b2]++;
    }
    for (; i < npos; i++) {
        int b = bits[pos[i]] >> 8;
        bsum[b] += vals[pos[i]];
        bcnt[b]++;
    }
    for (int b = 0; b < 0x7C; b++) { /* exact sums: the grouping does not change them */
        bsum[b] += bsum2[b];
        bcnt[b] += bcnt2[b];
    }
    double cum = 0.0;
    int cut = -1;
    for (int hb = 0x7B; hb >= 0; hb--) {
        if (!bcnt[hb]) continue;
        if (cum + bsum[hb] >= gap) { cut = hb; break; }
        cum += bsum[hb];
    }
    if (cut < 0) { /* never reached: every positive entry */
        for (Py_ssize_t q = 0; q < npos; q++) members[q] = pos[q];
        return npos;
    }
    Py_ssize_t n = 0, m = 0;
    for (i = 0; i < npos; i++) {
        uint16_t w = bits[pos[i]];
        int hb = w >> 8;
        members[n] = pos[i];
        n += hb > cut;
        keys[m] = ((uint32_t)(0xFFFF - w) << 16) | (uint32_t)pos[i]; /* descending value, then index */
        m += hb == cut;
    }
    if (m <= 48) { /* insertion sort */
        for (Py_ssize_t i = 1; i < m; i++) {
            uint32_t key = keys[i];
            Py_ssize_t q = i;
            while (q > 0 && keys[q - 1] > key) { keys[q] = keys[q - 1]; q--; }
            keys[q] = key;
        }
    } else { /* many in one bucket (ties): a stable counting sort by value keeps the index order */
        uint32_t start[257] = {0};
        uint32_t *tmp = keys + m;
        for (Py_ssize_t i = 0; i < m; i++) start[((keys[i] >> 16) & 0xFF) + 1]++;
        for (int b = 0; b < 256; b++) start[b + 1] += start[b];
        for (Py_ssize_t i = 0; i < m; i++) tmp[start[(keys[i] >> 16) & 0xFF]++] = keys[i];
        memcpy(keys, tmp, sizeof(uint32_t) * m);
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        Py_ssize_t j = keys[i] & 0xFFFF;
        members[n++] = j;
        cum += vals[j];
        if (cum >= gap) break;
    }
    return n;
}

/* positive, finite, non-zero float16 bits: 0x0001 .. 0x7BFF (their top byte orders them: 0 .. 0x7B) */
#define POSITIVE(w) ((uint16_t)((w) - 1) < 0x7BFF)

/* the row's sum of negative entries (exact: any order), and its positive entries' indices in order */
static double row_split(const uint16_t *bits, const float *vals, Py_ssize_t d, int32_t *pos, Py_ssize_t *npos) {
    Py_ssize_t j = 0, m = 0;
    double neg = 0.0;
#if defined(__SSE2__)
    __m128d a0 = _mm_setzero_pd(), a1 = _mm_setzero_pd(), a2 = _mm_setzero_pd(), a3 = _mm_setzero_pd();
    __m128 z = _mm_setzero_ps();
    for (; j + 8 <= d; j += 8) {
        __m128 u = _mm_loadu_ps(vals + j), v = _mm_loadu_ps(vals + j + 4);
        /* the positive entries' indices, in order, without a branch (finite rows: > 0 is POSITIVE) */
        int mu = _mm_movemask_ps(_mm_cmpgt_ps(u, z)), mv = _mm_movemask_ps(_mm_cmpgt_ps(v, z));
        _mm_storeu_si128((__m128i *)(pos + m), _mm_add_epi32(_mm_set1_epi32((int32_t)j), _mm_loadu_si128((const __m128i *)bits_at[mu])));
        m += ones[mu];
        _mm_storeu_si128((__m128i *)(pos + m), _mm_add_epi32(_mm_set1_epi32((int32_t)j + 4), _mm_loadu_si128((const __m128i *)bits_at[mv])));
        m += ones[mv];
        __m128 x = _mm_min_ps(u, z), y = _mm_min_ps(v, z);
        a0 = _mm_add_pd(a0, _mm_cvtps_pd(x));
        a1 = _mm_add_pd(a1, _mm_cvtps_pd(_mm_movehl_ps(x, x)));
        a2 = _mm_add_pd(a2, _mm_cvtps_pd(y));
        a3 = _mm_add_pd(a3, _mm_cvtps_pd(_mm_movehl_ps(y, y)));
    }
    double part[2];
    _mm_storeu_pd(part, _mm_add_pd(_mm_add_pd(a0, a1), _mm_add_pd(a2, a3)));
    neg = part[0] + part[1];
#endif
    for (; j < d; j++) { /* the rest, without a branch */
        neg += vals[j] < 0 ? vals[j] : 0.0f;
        pos[m] = (int32_t)j;
        m += POSITIVE(bits[j]);
    }
    *npos = m;
    return neg;
}

/* largest |value| of a row of float16 bits (finite rows: the bits without the sign order the magnitudes) */
static uint16_t row_peak(const uint16_t *bits, Py_ssize_t d) {
    uint16_t top = 0;
    for (Py_ssize_t j = 0; j < d; j++) {
        uint16_t a = bits[j] & 0x7FFF;
        top = a > top ? a : top;
    }
    return top;
}

/* topk_rows(v, ce, labels, correct, logits, pred, bias, n, d, C, k, count, sums, mcount, msize)
 *   v: (n, d) uint16 bits of the analysed embedding; ce: (n, d) bits of ce_pred or None (no minimal sets)
 *   labels, pred: int64 (n,); correct: uint8 (n,); logits: float64 (n, C); bias: float64 (n,)
 *   count (C, d) int64 += top-k membership; sums (2, C, d) float64 += rows by [correct, misclassified]
 *   mcount (C, d) int64 += minimal-set membership; msize (C,) int64 += set sizes
 * returns (max |v|, max |ce|) */
static PyObject *topk_rows(PyObject *self, PyObject *args) {
    Py_buffer v, ce, lab, cor, lg, pr, bs, cnt, sums, mcnt, msz;
    PyObject *ce_obj;
    Py_ssize_t n, d, C;
    int k;
    memset(&ce, 0, sizeof ce);
    if (!PyArg_ParseTuple(args, "y*Oy*y*y*y*y*nnniw*w*w*w*", &v, &ce_obj, &lab, &cor, &lg, &pr, &bs, &n, &d, &C, &k,
                          &cnt, &sums, &mcnt, &msz))
        return NULL;
    int do_mscs = ce_obj != Py_None, ok = 1;
    if (do_mscs && PyObject_GetBuffer(ce_obj, &ce, PyBUF_SIMPLE) < 0) ok = 0;
    ok = ok && n >= 0 && d > 0 && d < 65536 && C > 0 && k > 0 && k <= d;
    if (!ok && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_ckernels.topk_rows: bad sizes");
    ok = ok && need(&v, n * d * 2, "v") && need(&lab, n * 8, "labels") && need(&cor, n, "correct")
         && need(&cnt, C * d * 8, "count") && need(&sums, 2 * C * d * 8, "sums")
         && in_range((const int64_t *)lab.buf, n, C, "labels");
    if (ok && do_mscs)
        ok = need(&ce, n * d * 2, "ce") && need(&lg, n * C * 8, "logits") && need(&pr, n * 8, "pred")
             && need(&bs, n * 8, "bias") && need(&mcnt, C * d * 8, "mcount") && need(&msz, C * 8, "msize")
             && in_range((const int64_t *)pr.buf, n, C, "pred");
    double peak_v = 0.0, peak_ce = 0.0;
    if (ok) {
        float *vals = malloc(sizeof(float) * d), *cvals = malloc(sizeof(float) * d), *topv = malloc(sizeof(float) * k);
        int64_t *topi = malloc(sizeof(int64_t) * k), *members = malloc(sizeof(int64_t) * d);
        int32_t *pos = malloc(sizeof(int32_t) * (d + 8));
        uint32_t *keys = malloc(sizeof(uint32_t) * 2 * d);
        float *scratch = malloc(sizeof(float) * (d / 8 + d + 12));
        if (!vals || !cvals || !topv || !topi || !members || !pos || !keys || !scratch) {
            PyErr_NoMemory();
            ok = 0;
        } else {
            Py_BEGIN_ALLOW_THREADS
            const uint16_t *vb = v.buf, *cb = ce.buf;
            const int64_t *labels = lab.buf, *pred = pr.buf;
            const uint8_t *correct = cor.buf;
            const double *logits = lg.buf, *bias = bs.buf;
            int64_t *count = cnt.buf, *mcount = mcnt.buf, *msize = msz.buf;
            double *sm = sums.buf;
            uint16_t top = 0, topc = 0;
            int same = do_mscs && cb == vb; /* ce_pred analysed: one decode serves both */
            for (Py_ssize_t r = 0; r < n; r++) {
                const uint16_t *row = vb + r * d;
                int64_t c = labels[r];
                double *s = sm + ((correct[r] ? 0 : 1) * C + c) * d;
                uint16_t p = row_peak(row, d);
                top = p > top ? p : top;
                decode(row, vals, d);
                for (Py_ssize_t j = 0; j < d; j++) s[j] += (double)vals[j];
                int m = row_topk(vals, d, k, topv, topi, scratch);
                for (int i = 0; i < m; i++) count[c * d + topi[i]]++;
                if (!do_mscs) continue;
                /* minimal_sets' gap: runner-up logit - (bias + the negative entries), exact in float64 */
                const double *lr = logits + r * C;
                double runner = -INFINITY;
                for (Py_ssize_t q = 0; q < C; q++)
                    if (q != pred[r] && lr[q] > runner) runner = lr[q];
                const uint16_t *crow = cb + r * d;
                const float *cv = vals;
                if (!same) {
                    p = row_peak(crow, d);
                    decode(crow, cvals, d);
                    cv = cvals;
                }
                topc = p > topc ? p : topc;
                Py_ssize_t npos;
                double neg = row_split(crow, cv, d, pos, &npos);
                double gap = runner - (bias[r] + neg);
                if (gap > 0) {
                    Py_ssize_t ms = row_mscs(crow, cv, pos, npos, gap, members, keys);
                    for (Py_ssize_t i = 0; i < ms; i++) mcount[c * d + members[i]]++;
                    msize[c] += ms;
                }
            }
            peak_v = LUT[top];
            peak_ce = LUT[topc];
            Py_END_ALLOW_THREADS
        }
        free(vals); free(cvals); free(topv); free(topi); free(members); free(pos); free(keys); free(scratch);
    }
    PyBuffer_Release(&v); PyBuffer_Release(&lab); PyBuffer_Release(&cor); PyBuffer_Release(&lg); PyBuffer_Release(&pr);
    PyBuffer_Release(&bs); PyBuffer_Release(&cnt); PyBuffer_Release(&sums); PyBuffer_Release(&mcnt); PyBuffer_Release(&msz);
    if (do_mscs) PyBuffer_Release(&ce);
    if (!ok) return NULL;
    return Py_BuildValue("dd", peak_v, peak_ce);
}

/* ------------------------------------------------------------------ class sums, finiteness, diversity rows */

/* class_sums(v, labels, n, d, C, out): out (C, d) float64 += rows of v by label; returns max |v| */
static PyObject *class_sums(PyObject *self, PyObject *args) {
    Py_buffer v, lab, out;
    Py_ssize_t n, d, C;
    if (!PyArg_ParseTuple(args, "y*y*nnnw*", &v, &lab, &n, &d, &C, &out)) return NULL;
    int ok = n >= 0 && d > 0 && C > 0 && need(&v, n * d * 2, "v") && need(&lab, n * 8, "labels")
             && need(&out, C * d * 8, "out") && in_range((const int64_t *)lab.buf, n, C, "labels");
    uint16_t top = 0;
    float *f = ok ? malloc(sizeof(float) * d) : NULL;
    if (ok && !f) { PyErr_NoMemory(); ok = 0; }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        const uint16_t *vb = v.buf;
        const int64_t *labels = lab.buf;
        double *o = out.buf;
        for (Py_ssize_t r = 0; r < n; r++) {
            const uint16_t *row = vb + r * d;
            double *s = o + labels[r] * d;
            uint16_t p = row_peak(row, d);
            top = p > top ? p : top;
            decode(row, f, d);
            for (Py_ssize_t j = 0; j < d; j++) s[j] += (double)f[j];
        }
        Py_END_ALLOW_THREADS
    }
    free(f);
    PyBuffer_Release(&v); PyBuffer_Release(&lab); PyBuffer_Release(&out);
    if (!ok) return NULL;
    return PyFloat_FromDouble(LUT[top]);
}

/* finite_rows(bits, n, d, out): out (n,) uint8 = 1 where no value of the row is inf or NaN (exponent all ones) */
static PyObject *finite_rows(PyObject *self, PyObject *args) {
    Py_buffer v, out;
    Py_ssize_t n, d;
    if (!PyArg_ParseTuple(args, "y*nnw*", &v, &n, &d, &out)) return NULL;
    int ok = n >= 0 && d >= 0 && need(&v, n * d * 2, "bits") && need(&out, n, "out");
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        const uint16_t *vb = v.buf;
        uint8_t *o = out.buf;
        for (Py_ssize_t r = 0; r < n; r++) {
            const uint16_t *row = vb + r * d;
            uint16_t bad = 0;
            for (Py_ssize_t j = 0; j < d; j++) bad |= (uint16_t)((row[j] & 0x7C00) == 0x7C00);
            o[r] = !bad;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&v); PyBuffer_Release(&out);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* sum of squares of a float64 row, in four running sums (the order differs from a sequential sum: the
 * norms, and so the unit vectors, agree with the numpy path to float64 rounding) */
static double sum_squares(const double *x, Py_ssize_t d) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    Py_ssize_t j = 0;
    for (; j + 4 <= d; j += 4) {
        a0 += x[j] * x[j];
        a1 += x[j + 1] * x[j + 1];
        a2 += x[j + 2] * x[j + 2];
        a3 += x[j + 3] * x[j + 3];
    }
    for (; j < d; j++) a0 += x[j] * x[j];
    return (a0 + a1) + (a2 + a3);
}

/* diversity_rows(fe, labels, order, n, d, C, xs, sum_fe, sum_unit, n_unit)
 *   for i in range(n): row order[i] of fe (float16 bits) is written to xs[i] as float64 (rows grouped by
 *   class for the per-class second moments), and added to sum_fe[label]; rows with a non-zero norm add
 *   x / ||x|| to sum_unit[label] and count in n_unit[label]. Returns max |fe|. */
static PyObject *diversity_rows(PyObject *self, PyObject *args) {
    Py_buffer v, lab, ord, xs, sfe, sun, nun;
    Py_ssize_t n, d, C, rows;
    if (!PyArg_ParseTuple(args, "y*y*y*nnnnw*w*w*w*", &v, &lab, &ord, &rows, &n, &d, &C, &xs, &sfe, &sun, &nun))
        return NULL;
    int ok = n >= 0 && rows >= 0 && d > 0 && C > 0 && need(&v, rows * d * 2, "fe") && need(&lab, rows * 8, "labels")
             && need(&ord, n * 8, "order") && need(&xs, n * d * 8, "xs") && need(&sfe, C * d * 8, "sum_fe")
             && need(&sun, C * d * 8, "sum_unit") && need(&nun, C * 8, "n_unit")
             && in_range((const int64_t *)ord.buf, n, rows, "order") && in_range((const int64_t *)lab.buf, rows, C, "labels");
    uint16_t peak = 0;
    int failed = 0;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        const uint16_t *vb = v.buf;
        const int64_t *labels = lab.buf, *order = ord.buf;
        double *x = xs.buf, *sf = sfe.buf, *su = sun.buf;
        int64_t *nu = nun.buf;
        float *f = malloc(sizeof(float) * d);
        for (Py_ssize_t i = 0; f && i < n; i++) {
            const uint16_t *row = vb + order[i] * d;
            int64_t c = labels[order[i]];
            double *xr = x + i * d, *s = sf + c * d, *u = su + c * d;
            uint16_t p = row_peak(row, d);
            peak = p > peak ? p : peak;
            decode(row, f, d);
            for (Py_ssize_t j = 0; j < d; j++) {
                xr[j] = f[j];
                s[j] += xr[j];
            }
            double sq = sum_squares(xr, d);
            if (sq > 0) {
                double inv = 1.0 / sqrt(sq);
                for (Py_ssize_t j = 0; j < d; j++) u[j] += xr[j] * inv;
                nu[c]++;
            }
        }
        if (!f) failed = 1;
        free(f);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&v); PyBuffer_Release(&lab); PyBuffer_Release(&ord); PyBuffer_Release(&xs);
    PyBuffer_Release(&sfe); PyBuffer_Release(&sun); PyBuffer_Release(&nun);
    if (failed) return PyErr_NoMemory();
    if (!ok) return NULL;
    return PyFloat_FromDouble(LUT[peak]);
}

/* ------------------------------------------------------------------ k nearest neighbours */

/* (v, i) comes before (w, j) in the order (distance, row); a slot with row -1 is empty (after everything) */
static inline int before(float v, int64_t i, float w, int64_t j) {
    return v < w || (v == w && (j < 0 || i < j));
}

/* offer (v, i) to a row's sorted list of its kk nearest */
static inline void offer(float v, int64_t i, int kk, float *bv, int64_t *bi) {
    if (!before(v, i, bv[kk - 1], bi[kk - 1])) return;
    int p = kk - 1;
    while (p > 0 && before(v, i, bv[p - 1], bi[p - 1])) {
        bv[p] = bv[p - 1];
        bi[p] = bi[p - 1];
        p--;
    }
    bv[p] = v;
    bi[p] = i;
}

#define KNN_STRIP 16

/* knn_block(g, R, M, sq, a0, b0, kk, a_lo, a_hi, b_lo, b_hi, best_v, best_i, N)
 *   g: (R, M) float32 block x_a . x_b of the Gram matrix for rows a = a0 + r and b = b0 + c of the sample
 *   (sq: the N squared norms). The distance of a to b is (sq_a - 2 g) + sq_b, clamped at 0, in float32 (the
 *   operations of knn_same_class, in its order). Rows a0 + [a_lo, a_hi) offer each b (not themselves) to
 *   their lists of the kk nearest (best_v / best_i rows: sorted under (distance, row), empty slots +inf / -1);
 *   unless the block is on the diagonal (a0 == b0), rows b0 + [b_lo, b_hi) likewise offer each a, at the
 *   distance (sq_b - 2 g) + sq_a. Threads given disjoint ranges write disjoint rows. Strips of 16 distances
 *   are computed together and compared with the current kk-th, so only the few that can enter are offered. */
static PyObject *knn_block(PyObject *self, PyObject *args) {
    Py_buffer g, sqb, bvb, bib;
    Py_ssize_t R, M, a0, b0, a_lo, a_hi, b_lo, b_hi, N;
    int kk;
    if (!PyArg_ParseTuple(args, "y*nny*nninnnnw*w*n", &g, &R, &M, &sqb, &a0, &b0, &kk, &a_lo, &a_hi, &b_lo, &b_hi, &bvb, &bib, &N))
        return NULL;
    int diag = a0 == b0;
    int ok = R > 0 && M > 0 && kk > 0 && N > 0 && a0 >= 0 && b0 >= 0 && a0 + R <= N && b0 + M <= N
             && (diag ? R == M : (a0 + R <= b0 || b0 + M <= a0)) && 0 <= a_lo && a_lo <= a_hi && a_hi <= R
             && 0 <= b_lo && b_lo <= b_hi && b_hi <= M;
    if (!ok) PyErr_SetString(PyExc_ValueError, "_ckernels.knn_block: bad block bounds");
    ok = ok && need(&g, R * M * 4, "g") && need(&sqb, N * 4, "sq") && need(&bvb, N * kk * 4, "best_v")
         && need(&bib, N * kk * 8, "best_i");
    float *thr = NULL;
    if (ok && !(thr = malloc(sizeof(float) * (b_hi - b_lo + 1)))) { PyErr_NoMemory(); ok = 0; }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        const float *gb = g.buf, *sq = sqb.buf, *sa = sq + a0, *sb = sq + b0;
        float *bv = bvb.buf;
        int64_t *bi = bib.buf;
        float v[KNN_STRIP];
        for (Py_ssize_t r = a_lo; r < a_hi; r++) { /* rows a: along the block's row */
            const float *row = gb + r * M;
            float base = sa[r], *rv = bv + (a0 + r) * kk;
            int64_t *ri = bi + (a0 + r) * kk;
            for (Py_ssize_t c0 = 0; c0 < M; c0 += KNN_STRIP) {
                Py_ssize_t m = M - c0 < KNN_STRIP ? M - c0 : KNN_STRIP;
                float t = rv[kk - 1];
                int hit = 0;
                for (Py_ssize_t j = 0; j < m; j++) {
                    float x = row[c0 + j] * -2.0f;
                    x = x + base;
                    x = x + sb[c0 + j];
                    x = x < 0.0f ? 0.0f : x;
                    v[j] = x;
                    hit |= x <= t;
                }
                if (!hit) continue;
                for (Py_ssize_t j = 0; j < m; j++)
                    if (!(diag && c0 + j == r)) offer(v[j], b0 + c0 + j, kk, rv, ri);
            }
        }
        if (!diag && b_hi > b_lo) { /* rows b: down the block's columns, a strip of columns at a time */
            for (Py_ssize_t c = b_lo; c < b_hi; c++) thr[c - b_lo] = bv[(b0 + c) * kk + kk - 1];
            for (Py_ssize_t r = 0; r < R; r++) {
                const float *row = gb + r * M;
                float base = sa[r];
                for (Py_ssize_t c0 = b_lo; c0 < b_hi; c0 += KNN_STRIP) {
                    Py_ssize_t m = b_hi - c0 < KNN_STRIP ? b_hi - c0 : KNN_STRIP;
                    const float *t = thr + (c0 - b_lo);
                    int hit = 0;
                    for (Py_ssize_t j = 0; j < m; j++) {
                        float x = row[c0 + j] * -2.0f;
                        x = x + sb[c0 + j];
                        x = x + base;
                        x = x < 0.0f ? 0.0f : x;
                        v[j] = x;
                        hit |= x <= t[j];
                    }
                    if (!hit) continue;
                    for (Py_ssize_t j = 0; j < m; j++) {
                        float *cv = bv + (b0 + c0 + j) * kk;
                        offer(v[j], a0 + r, kk, cv, bi + (b0 + c0 + j) * kk);
                        thr[c0 - b_lo + j] = cv[kk - 1];
                    }
                }
            }
        }
        Py_END_ALLOW_THREADS
    }
    free(thr);
    PyBuffer_Release(&g); PyBuffer_Release(&sqb); PyBuffer_Release(&bvb); PyBuffer_Release(&bib);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* gather_mean(v, labels, identity, n, d, C, K, out): out[r] = mean of row r of v (float16 bits) over the K
 * features identity[labels[r]] (float64; the sum of K float16 values is exact, then divided by K) */
static PyObject *gather_mean(PyObject *self, PyObject *args) {
    Py_buffer v, lab, ident, out;
    Py_ssize_t n, d, C, K;
    if (!PyArg_ParseTuple(args, "y*y*y*nnnnw*", &v, &lab, &ident, &n, &d, &C, &K, &out)) return NULL;
    int ok = n >= 0 && d > 0 && C > 0 && K > 0 && need(&v, n * d * 2, "v") && need(&lab, n * 8, "labels")
             && need(&ident, C * K * 8, "identity") && need(&out, n * 8, "out")
             && in_range((const int64_t *)lab.buf, n, C, "labels") && in_range((const int64_t *)ident.buf, C * K, d, "identity");
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        const uint16_t *vb = v.buf;
        const int64_t *labels = lab.buf, *id = ident.buf;
        double *o = out.buf;
        for (Py_ssize_t r = 0; r < n; r++) {
            const uint16_t *row = vb + r * d;
            const int64_t *cols = id + labels[r] * K;
            double sum = 0.0;
            for (Py_ssize_t i = 0; i < K; i++) sum += LUT[row[cols[i]]];
            o[r] = sum / (double)K;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&v); PyBuffer_Release(&lab); PyBuffer_Release(&ident); PyBuffer_Release(&out);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"topk_rows", topk_rows, METH_VARARGS, "top-K counts, class sums by correctness and minimal sets of float16 rows"},
    {"class_sums", class_sums, METH_VARARGS, "float64 class sums of float16 rows"},
    {"finite_rows", finite_rows, METH_VARARGS, "rows of float16 bits without inf or NaN"},
    {"gather_mean", gather_mean, METH_VARARGS, "each float16 row's mean over its class's features"},
    {"knn_block", knn_block, METH_VARARGS, "rows of a block of the Gram matrix offer each other to their lists of the k nearest"},
    {"diversity_rows", diversity_rows, METH_VARARGS, "float16 rows to float64 in class order, with class sums of rows and unit rows"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernels", "fragility's compiled analysis kernels", -1, methods};

PyMODINIT_FUNC PyInit__ckernels(void) {
    for (uint32_t i = 0; i < 65536; i++) LUT[i] = half_to_float((uint16_t)i);
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c")) decode = decode_f16c;
#endif
    return PyModule_Create(&module);
}
