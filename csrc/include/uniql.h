/*
 * uniql.h -- the one public header of libuniql, the C11 core of uniql.
 *
 * Conventions (docs/design.md §1.1):
 *   - every public function returns uq_status; details go to a thread-local message (uq_last_error());
 *   - the library never calls exit, abort or printf;
 *   - caller allocates outputs; long-lived objects have _init/_free pairs (free accepts NULL);
 *   - row-major storage, weights (out, in) as in Hugging Face, y = x W^T; int64_t dims, size_t bytes;
 *   - float32 in kernels/runtime, float64 for statistics, eigen/SVD, Cholesky and GPTQ error feedback.
 *
 * The header is split into one section per area. Each area's implementation lives in csrc/<area>/.
 */
#ifndef UNIQL_H
#define UNIQL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================================= core ===== */

typedef enum {
    UQ_OK = 0,
    UQ_ERR_ARG = 1,         /* invalid argument value: NULL pointer, negative or zero size, bad option */
    UQ_ERR_SHAPE = 2,       /* array shapes inconsistent with each other */
    UQ_ERR_DTYPE = 3,       /* unsupported or mismatched element type */
    UQ_ERR_NOMEM = 4,       /* allocation failed */
    UQ_ERR_IO = 5,          /* open/read/write/rename failed (errno text in the message) */
    UQ_ERR_FORMAT = 6,      /* malformed file: bad header, truncated, overlapping offsets ... */
    UQ_ERR_NUMERIC = 7,     /* NaN/Inf in input, matrix not SPD, LAPACK did not converge */
    UQ_ERR_UNSUPPORTED = 8, /* valid but unsupported request: architecture, dtype combination ... */
    UQ_ERR_RANGE = 9,       /* index or value out of range: token id, keep size, position */
    UQ_ERR_STATE = 10,      /* object in the wrong state for this call (e.g. KV cache full) */
    UQ_ERR_INTERNAL = 11    /* a bug in uniql: please report */
} uq_status;

/* Name of a status ("UQ_ERR_SHAPE"); never NULL. */
const char *uq_status_name(uq_status s);

/* Message of the last error set on this thread ("" when none). Valid until the next uniql call. */
const char *uq_last_error(void);

/* Clears this thread's error message. */
void uq_clear_error(void);

/* Sets this thread's error message (printf-style) and returns s, so that callers can write
 * `return uq_set_error(UQ_ERR_ARG, "n must be positive, got %lld", (long long)n);`. */
uq_status uq_set_error(uq_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Library version string, e.g. "0.1.0". */
const char *uq_version(void);

/* 64-byte aligned allocation; *out = NULL and UQ_ERR_NOMEM on failure (size 0 allocates 64 bytes).
 * Free with uq_free (NULL accepted). */
uq_status uq_alloc(size_t bytes, void **out);
uq_status uq_calloc(size_t bytes, void **out);
void uq_free(void *p);

/* Overflow-checked size product: *out = a * b * elem; UQ_ERR_RANGE on overflow or negative factor. */
uq_status uq_size_mul(int64_t a, int64_t b, size_t elem, size_t *out);

/* Checks n floats / doubles for NaN or Inf; UQ_ERR_NUMERIC naming `what` and the first bad index. */
uq_status uq_check_finite_f32(const float *x, int64_t n, const char *what);
uq_status uq_check_finite_f64(const double *x, int64_t n, const char *what);

/* Half-precision conversions (IEEE binary16 and bfloat16 <-> float32), n elements, round to nearest even. */
uq_status uq_convert_f16_to_f32(const uint16_t *src, int64_t n, float *dst);
uq_status uq_convert_bf16_to_f32(const uint16_t *src, int64_t n, float *dst);
uq_status uq_convert_f32_to_f16(const float *src, int64_t n, uint16_t *dst);
uq_status uq_convert_f32_to_bf16(const float *src, int64_t n, uint16_t *dst);

/* ====================================================================== statistics (compress/) ===== */
/* Second-moment accumulation G += X^T X over a chunk of T tokens (rows of X, n features).
 * G: (n, n) float64, row-major, caller-allocated, full symmetric matrix is written. Only G's lower triangle
 * is read (it is updated with dsyrk in float64 and then mirrored onto the upper triangle), so G must start
 * symmetric (e.g. zeros) and be updated only through these functions.
 * X: (T, n) with leading dimension ldx >= n. T = 0 is allowed and does nothing. float32 input is converted to
 * float64 in row chunks (UQ_COV_CHUNK_ROWS rows, internal buffer of that many rows) before dsyrk.
 * X is checked for NaN/Inf before G is touched: on any error G is unchanged.
 * Returns UQ_ERR_ARG (NULL, n <= 0, T < 0, ldx < n), UQ_ERR_NUMERIC (NaN/Inf in X, naming row and column),
 * UQ_ERR_NOMEM. */
#define UQ_COV_CHUNK_ROWS 256
uq_status uq_cov_accumulate_f32(double *G, int64_t n, const float *X, int64_t T, int64_t ldx);
uq_status uq_cov_accumulate_f64(double *G, int64_t n, const double *X, int64_t T, int64_t ldx);
/* dst += src, both (n, n) float64 (elementwise over all n*n entries). UQ_ERR_ARG (NULL, n <= 0). */
uq_status uq_cov_merge(double *dst, const double *src, int64_t n);

/* ======================================================================= linear algebra (linalg/) == */
/* All matrices float64 row-major, caller-allocated, n, m >= 1. Inputs are not modified. Symmetric inputs
 * (eigh, cholesky, spd_inv_diag, sqrtm) must be symmetric: only their LOWER triangle (A[i][j], j <= i) is
 * read. Every input is checked for NaN/Inf first (UQ_ERR_NUMERIC naming the argument and index).
 * Common statuses: UQ_ERR_ARG (NULL pointer, size <= 0 or too large for LAPACK's 32-bit integers, bad
 * scalar), UQ_ERR_NOMEM (workspace), UQ_ERR_NUMERIC (NaN/Inf, not SPD, LAPACK did not converge).
 * These functions call OpenBLAS/LAPACKE (which may use threads); never call them inside an OpenMP region.
 *
 * eigh: symmetric A (n,n) -> eigenvalues w (n) ascending, eigenvectors as columns of V (n,n)
 * (A V = V diag(w), V^T V = I). LAPACK dsyevd (divide and conquer), workspace 1+6n+2n^2 doubles, 3+5n ints. */
uq_status uq_linalg_eigh(const double *A, int64_t n, double *w, double *V);
/* Thin SVD: A (m,n) = U diag(S) Vt, k = min(m,n); U (m,k), S (k) descending, Vt (k,n). LAPACK dgesdd. */
uq_status uq_linalg_svd(const double *A, int64_t m, int64_t n, double *U, double *S, double *Vt);
/* Cholesky A = L L^T of SPD A (n,n); L (n,n) lower triangular with zeros above the diagonal (may alias A).
 * UQ_ERR_NUMERIC if A is not positive definite (the message names the failing leading minor). */
uq_status uq_linalg_cholesky(const double *A, int64_t n, double *L);
/* d (n) = diag((A + shift*I)^{-1}) for SPD A + shift*I (shift finite, any sign), via Cholesky
 * A + shift I = L L^T, L^{-1} by dtrtri, d_i = squared norm of column i of L^{-1} (no explicit inverse,
 * no eigendecomposition). Workspace n*n doubles. UQ_ERR_NUMERIC if A + shift*I is not positive definite. */
uq_status uq_linalg_spd_inv_diag(const double *A, int64_t n, double shift, double *d);
/* S = A^{1/2}, Sinv = A^{-1/2} of symmetric PSD A via eigh with eigenvalues floored at `floor` (finite, > 0):
 * S = V diag(max(w, floor)^{1/2}) V^T, Sinv = V diag(max(w, floor)^{-1/2}) V^T (both exactly symmetric).
 * Either output may be NULL (not both). Workspace about 3 n^2 doubles. */
uq_status uq_linalg_sqrtm(const double *A, int64_t n, double floor, double *S, double *Sinv);
/* B (n,n) = the full symmetric matrix whose lower triangle is A's lower triangle (B may alias A: then the
 * lower triangle is mirrored onto the upper one). Cache-blocked; no checks beyond NULL / n <= 0. */
uq_status uq_linalg_sym_from_lower(const double *A, int64_t n, double *B);

/* ================================================================== int4 quantization (compress/) == */
/*
 * Packed int4 layout (format version 1), used by the artifact, the runtime and every kernel:
 *   weight W (rows, cols), group size g (g >= 1), ngroups = ceil(cols / g);
 *   code q[r][c] in 0..15, dequantized value  w = (q - 8) * scale[r][c / g];
 *   codes are packed row-major, two per byte, row stride = (cols + 1) / 2 bytes:
 *     byte (r, b) = q[r][2b] | (q[r][2b+1] << 4)   (low nibble = even column; a pad nibble is 8);
 *   scales: (rows, ngroups), row-major: float32 out of the quantizers, float16 in the artifact and in a runtime
 *   uq_linear (uq_linear, "scales in memory").
 * Quantizer (both RTN and GPTQ): s = max|w over group| / 7.5 ; q = clamp(rint(w / s) + 8, 0, 15)
 * (round half to even); a group of zeros has s = 0 and codes 8. Exactly: s = (float)(amax / 7.5) is
 * computed in double and rounded once to the stored float32 scale; q = clamp(rint((double)w / (double)s) + 8)
 * with the current (float32 or float64) value of w; the dequantized value (q - 8) * s is exact in double
 * and rounds once to float32. A last group shorter than g (cols % g != 0) is allowed.
 * |w - dequant(q)| <= s/2 for every element (up to float32 roundings of s and of (q - 8) s, ~2^-20 s).
 */
#define UQ_Q4_OFFSET 8
#define UQ_Q4_DEFAULT_GROUP 128
#define UQ_Q4_ROW_BYTES(cols) (((cols) + 1) / 2)
#define UQ_Q4_NGROUPS(cols, group) (((cols) + (group) - 1) / (group))

/* Common statuses of the int4 functions: UQ_ERR_ARG (NULL pointer, rows/cols <= 0, ldw < cols, group < 1,
 * damp negative or not finite, block < 0), UQ_ERR_NUMERIC (NaN/Inf in W or H, damped H not positive
 * definite, a scale overflowing float32), UQ_ERR_RANGE (a code > 15 given to uq_q4_pack), UQ_ERR_NOMEM.
 * Outputs: packed (rows, UQ_Q4_ROW_BYTES(cols)) uint8 and scales (rows, UQ_Q4_NGROUPS(cols, group)) float32,
 * both contiguous and caller-allocated. */

/* Round-to-nearest quantization of W (rows, cols; leading dimension ldw >= cols). */
uq_status uq_q4_quantize_rtn(const float *W, int64_t rows, int64_t cols, int64_t ldw, int64_t group,
                             uint8_t *packed, float *scales);
/* GPTQ (Frantar et al.) with Hessian H (cols, cols) float64 = mean X^T X of the layer input (symmetric PSD;
 * only its lower triangle is read; its scale does not matter):
 * dead columns (H_ii == 0) get H_ii = 1 and W[:, i] = 0; damping damp * mean(diag H) (damp = 0.01);
 * U = chol_upper((H + damping I)^{-1}) (H^{-1} = U^T U) in float64;
 * columns in natural order, processed in blocks of `block` (0 = group size) with error feedback in float64:
 * err_i = (w_i - dequant(q_i)) / U_ii, the block's remaining columns -= err_i U[i, i+1:block end] as each
 * column is quantized, and after the block all later columns -= Err_block U[block, later] (one dgemm).
 * Each group's scale is computed from the error-updated weights when the group starts: a block is cut short
 * at a group start that falls inside it, so that every column of a new group has received the error of all
 * earlier columns (the result does not depend on `block` beyond rounding). Workspace: cols^2 + rows*cols +
 * rows*block doubles. Never call inside an OpenMP region (it uses BLAS/LAPACK). */
uq_status uq_q4_quantize_gptq(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                              int64_t group, double damp, int64_t block, uint8_t *packed, float *scales);
/* GPTQ options (flags of uq_q4_quantize_gptq_ex; 0 is uq_q4_quantize_gptq):
 *   UQ_Q4_MSE_SCALE: each group's scale is the one of amax / (7.5 + k/8), k = 0..20, with the smallest squared
 *                    rounding error of the group's (error-updated) weights, instead of amax / 7.5;
 *   UQ_Q4_ACT_ORDER: activation order with static groups: every group's scale is taken from the weights before
 *                    any error feedback, then the columns are quantized in descending diag(H) order (stable),
 *                    blocks of `block` columns in that order. Groups stay contiguous in the natural column order
 *                    (the format, and the exactness of column prefixes, are unchanged). */
enum { UQ_Q4_MSE_SCALE = 1, UQ_Q4_ACT_ORDER = 2, UQ_Q4_ASYM = 4, UQ_Q4_FIXED_SCALES = 8 };
uq_status uq_q4_quantize_gptq_ex(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                                 int64_t group, double damp, int64_t block, int flags, uint8_t *packed,
                                 float *scales);
/* Asymmetric int4 (UQ_Q4_ASYM, a compression-side option; the runtime kernels read symmetric int4 only): per row
 * and group an integer zero point z in 0..15 (zeros (rows, ngroups) uint8, caller-allocated) in place of the fixed
 * offset 8, w = (q - z) * s. With lo = min(min w, 0), hi = max(max w, 0) of the group (error-updated weights, or
 * the weights before feedback under UQ_Q4_ACT_ORDER): s = (float)((hi - lo) / 15), z = clamp(rint(-lo / s), 0, 15);
 * with UQ_Q4_MSE_SCALE the range shrunk by 15 / (15 + k/4), k = 0..20 (z kept), with the least squared rounding
 * error (ties: the larger scale). q = clamp(rint(w / s) + z, 0, 15); a group of zeros has s = 0 and codes z = 8.
 * Without UQ_Q4_ASYM zeros may be NULL (else it is filled with 8) and the result is uq_q4_quantize_gptq_ex's. */
uq_status uq_q4_quantize_gptq_z(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                                int64_t group, double damp, int64_t block, int flags, uint8_t *packed,
                                float *scales, uint8_t *zeros);
/* UQ_Q4_FIXED_SCALES (uq_q4_quantize_gptq_z / _ex; symmetric only, UQ_Q4_MSE_SCALE is then ignored): `scales` is an
 * input (finite, >= 0; else UQ_ERR_NUMERIC) and GPTQ chooses the codes for those scales.
 *
 * Scale re-fit (Hessian-weighted least squares): with the codes q of a row fixed, w_hat(s) = (q - 8) * s per group
 * is linear in the row's group scales s, so the scales minimising the GPTQ objective
 *   e(s) = (w - w_hat(s))^T H_d (w - w_hat(s)),  H_d = H + damp * mean(diag H) I  (dead columns as GPTQ: H_ii = 1,
 *   w_i = 0), over all of the row's groups jointly (the cross-group terms of H included)
 * solve the normal equations M s = b, M[g][h] = sum_{c in g, d in h} q_c H_d[c][d] q_d, b[g] = sum_{c in g} q_c
 * (H_d w)_c (float64; groups whose codes are all 8 keep their scale). A row keeps its old scales when M is not
 * positive definite or a solved scale is not in (0, 65504] (float16-storable), or when the re-fit does not lower
 * e. Rows are independent (exact under row truncation; column truncation drops groups, whose scales were fitted
 * jointly with the kept ones).
 *   uq_q4_refit_scales: in place on scales (rows, ngroups) for the given packed codes; err (rows, may be NULL)
 *     receives e per row after the re-fit.
 *   uq_q4_quantize_gptq_refit: `passes` (1..64) rounds of GPTQ (round 1 with flags UQ_Q4_MSE_SCALE /
 *     UQ_Q4_ACT_ORDER as uq_q4_quantize_gptq_ex; later rounds with the best scales so far fixed,
 *     UQ_Q4_FIXED_SCALES) each followed by the re-fit; per row the candidate with the least e wins, the plain GPTQ
 *     result included, so e never exceeds GPTQ's. Workspace ~ cols^2 + 4 rows*cols + rows*ngroups^2 doubles.
 * Statuses as GPTQ (UQ_ERR_ARG also for passes out of range, other flags). */
uq_status uq_q4_refit_scales(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                             int64_t group, double damp, const uint8_t *packed, float *scales, double *err);
uq_status uq_q4_quantize_gptq_refit(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                                    int64_t group, double damp, int64_t block, int flags, int passes,
                                    uint8_t *packed, float *scales, double *err);
/* codes (rows, cols) one per byte, values 0..15 <-> packed (rows, (cols+1)/2); pack writes pad nibbles 8,
 * unpack ignores them. */
/* int8 round-to-nearest (UQ_W_Q8 format): per row and group s = (float)(max|w| / 127) (double, rounded once),
 * q = clamp(rint(w / s), -127, 127) (0 for a zero group); codes (rows, cols) int8 and scales
 * (rows, UQ_Q8_NGROUPS(cols, group)), caller-allocated. UQ_ERR_ARG (NULL, sizes), UQ_ERR_NUMERIC (NaN/Inf). */
#define UQ_Q8_NGROUPS(cols, group) (((cols) + (group) - 1) / (group))
uq_status uq_q8_quantize_rtn(const float *W, int64_t rows, int64_t cols, int64_t ldw, int64_t group,
                             int8_t *codes, float *scales);
uq_status uq_q4_pack(const uint8_t *codes, int64_t rows, int64_t cols, uint8_t *packed);
uq_status uq_q4_unpack(const uint8_t *packed, int64_t rows, int64_t cols, uint8_t *codes);
/* W (rows, cols) float32 contiguous = dequantized packed + scales. */
uq_status uq_q4_dequantize(const uint8_t *packed, const float *scales, int64_t rows, int64_t cols,
                           int64_t group, float *W);
/* The same with zero points zeros (rows, ngroups) uint8 0..15 (NULL: 8), w = fl((q - z) * s); UQ_ERR_RANGE for a
 * zero point above 15 (naming it). */
uq_status uq_q4_dequantize_z(const uint8_t *packed, const float *scales, const uint8_t *zeros, int64_t rows,
                             int64_t cols, int64_t group, float *W);

/* ========================================================================== safetensors (io/) ===== */

typedef enum {
    UQ_DT_F32 = 0,
    UQ_DT_F16 = 1,
    UQ_DT_BF16 = 2,
    UQ_DT_I8 = 3,
    UQ_DT_U8 = 4,
    UQ_DT_I32 = 5,
    UQ_DT_I64 = 6,
    UQ_DT_F64 = 7,
    UQ_DT_COUNT = 8
} uq_dtype;

#define UQ_MAX_NDIM 8

/* Element size in bytes (0 for an invalid dtype) and safetensors name ("F32", ...; NULL if invalid). */
size_t uq_dtype_size(uq_dtype dt);
const char *uq_dtype_name(uq_dtype dt);
/* Inverse of uq_dtype_name ("F32" -> UQ_DT_F32). UQ_ERR_DTYPE (naming it) for any other string. */
uq_status uq_dtype_parse(const char *name, uq_dtype *out);

typedef struct {
    const char *name;              /* NUL-terminated, owned by the file object (reader) or the caller (writer) */
    uq_dtype dtype;
    int32_t ndim;                  /* 0 .. UQ_MAX_NDIM */
    int64_t shape[UQ_MAX_NDIM];
    size_t nbytes;                 /* product(shape) * dtype size */
    const void *data;              /* reader: points into the mapping; writer: caller's buffer */
} uq_st_tensor;

typedef struct uq_st_file uq_st_file; /* opaque: an mmapped, validated safetensors file */

/* Opens and validates path: header length bounded (<= 100 MiB) and inside the file, JSON well-formed,
 * dtypes known, shapes non-negative without overflow, offsets inside the data area, sizes consistent,
 * no overlaps (the full rules are at the top of csrc/io/safetensors.c). *out = NULL on failure.
 * UQ_ERR_IO (cannot open/stat/map, not a regular file), UQ_ERR_FORMAT (anything malformed, naming the file
 * and what), UQ_ERR_UNSUPPORTED (a valid safetensors dtype uniql does not read: BOOL, I16, U16, U32, U64, F8_*,
 * ...; or more than UQ_MAX_NDIM dims), UQ_ERR_NOMEM. Tensor data pointers stay valid until uq_st_close. */
uq_status uq_st_open(const char *path, uq_st_file **out);
/* Unmaps and frees everything (names included); NULL accepted. */
void uq_st_close(uq_st_file *f);
/* Number of tensors ("__metadata__" excluded); 0 for NULL. */
int64_t uq_st_count(const uq_st_file *f);
/* i-th tensor in file order of data offsets. UQ_ERR_RANGE if i out of range. */
uq_status uq_st_get(const uq_st_file *f, int64_t i, uq_st_tensor *out);
/* Tensor by name; UQ_ERR_RANGE (message names the tensor) if absent. */
uq_status uq_st_find(const uq_st_file *f, const char *name, uq_st_tensor *out);
/* The "__metadata__" object re-serialized as compact JSON ("{}" when absent); owned by f. */
const char *uq_st_metadata(const uq_st_file *f);
/* Number of metadata entries and the i-th (file order) key/value, NUL-terminated, owned by f.
 * UQ_ERR_RANGE if i is out of range. */
int64_t uq_st_metadata_count(const uq_st_file *f);
uq_status uq_st_metadata_item(const uq_st_file *f, int64_t i, const char **key, const char **value);

/* Writes n tensors (names unique, data of nbytes each) and optional metadata (string key/value pairs,
 * nmeta of them) to path. The file is written to "<path>.tmp.<pid>" and renamed over path at the end,
 * so an interrupted write never leaves a truncated file under path. Header keys in the given order
 * ("__metadata__" first when nmeta > 0), padded with spaces to a multiple of 8 bytes; data contiguous in the
 * given order. Inputs are validated before any file is created: UQ_ERR_ARG (NULL/empty/duplicate/non-UTF-8
 * names or metadata keys, "__metadata__" as a tensor name), UQ_ERR_DTYPE (invalid dtype), UQ_ERR_SHAPE
 * (ndim out of range, negative dim, nbytes != product(shape) * dtype size). UQ_ERR_IO (errno text) on any
 * file-system failure, after removing the temp file. Concurrent writers of one path in one process would
 * share the temp name: serialize them. */
uq_status uq_st_write(const char *path, const uq_st_tensor *tensors, int64_t n, const char *const *meta_keys,
                      const char *const *meta_values, int64_t nmeta);

/* ======================================================== linears and the elastic layout (kernels/) ====== */
/*
 * The runtime (runtime/ssm.c: every architecture, see "the runtime" below) runs any per-layer keep sizes,
 * switchable between tokens. Weights are never copied: descriptors point into caller-owned arrays that must
 * outlive the model object.
 *
 * Elastic layout of an attention + MLP layer (docs/design.md §3.3 and §5; Llama / Qwen2). Per layer l:
 *   - MLP: stored intermediate size K_l (= rows of gate/up = cols of down); keep k <= K_l uses the first k
 *     rows of gate/up and the first k columns of down.
 *   - attention: stored head dim R_l (= rows of q / n_heads; even, <= head_dim d); keep r (even) <= R_l uses
 *     the first r rows of every Q/K/V head and the first r columns of every head's R_l-wide column segment
 *     of o_proj. Q/K heads are stored pair-interleaved: rows (2j, 2j+1) of a head are RoPE pair j, rotating
 *     at the original frequency index freq[l][kv_head][j] (int32 (n_kv, R_l/2); identity when NULL).
 *     Inverse frequencies are those of the original head dim d (with llama3 scaling when configured) and
 *     the softmax scale stays 1/sqrt(d) at every r.
 *   - KV cache: K and V are always computed and cached at width R_l ("loaded" size); attention reads the
 *     first r dims, so keep changes never invalidate the cache.
 *
 * Linear layer y = x W^T + b with segmented selection (uq_linear_forward): the W rows are nseg_out
 * segments of seg_out = rows/nseg_out rows, of which the first keep_out of each are computed; the columns are
 * nseg_in segments of seg_in = cols/nseg_in, of which the first keep_in of each are used. x is packed
 * (T, nseg_in*keep_in), y packed (T, nseg_out*keep_out).
 * int4 weights (layout of the int4 section) with column segments: each segment has its own groups,
 * gps = ceil(seg_in/group) scales per segment, scales (rows, scale_cols) with scale_cols = nseg_in*gps
 * (for nseg_in == 1, or seg_in % group == 0, exactly the standard layout); seg_in must be even when
 * nseg_in > 1. A keep_in that cuts a group keeps that group's scale (exact truncation).
 * Determinism: every output element is computed by the same sequence of float operations whatever T, the
 * other keep sizes, the number of rows, the thread count or the stored size beyond the kept prefix. So a
 * model loaded truncated at rate rho and a full model switched to rho give bit-identical logits.
 */
/* Scales in memory: the runtime keeps int4 and int8 group scales as IEEE float16 bits (the artifact's storage;
 * half the bytes of float32: 3.4 MB of SmolLM2's 107 MB int4 model) and converts them exactly to float inside
 * the kernels (F16C / AVX-512 vcvtph2ps, uq_h2f on the ref path), so every sum below uses the same float
 * scale as a float32 copy of the stored value would: results are bit-identical to float32 scales that hold
 * the same (fp16-representable) values. The quantizers (uq_q4_quantize_*, uq_q8_quantize_rtn) still return
 * float32 scales; the compressor rounds them to float16 before it stores or uses them.
 *
 * int8 weights (UQ_W_Q8, csrc/kernels/q8w.c): `packed` holds int8 codes (rows, cols) row-major (read as int8_t),
 * w = q * scale with scales (rows, scale_cols), group and segments exactly as int4 (any segment width). The
 * linear runs fp32 activations on every path with one operation sequence (bit-identical): per kept group,
 * 16 lane fma accumulators over pieces of 16 columns (zero padded), uq_k_reduce16, tot = fma(gs, scale, tot). */
typedef enum { UQ_W_F32 = 0, UQ_W_Q4 = 1, UQ_W_F16 = 2, UQ_W_Q8 = 3 } uq_wkind;
typedef enum { UQ_Q4_ROWMAJOR = 0, UQ_Q4_R16 = 1 } uq_q4_layout;

typedef struct {
    int32_t kind;          /* uq_wkind */
    int64_t rows, cols;    /* logical weight shape (out, in) */
    const float *w;        /* UQ_W_F32: (rows, cols) row-major */
    const uint8_t *packed; /* UQ_W_Q4: (rows, (cols+1)/2) */
    const uint16_t *scales; /* UQ_W_Q4 / UQ_W_Q8: (rows, scale_cols) IEEE half (see "scales in memory" above) */
    int64_t group;         /* UQ_W_Q4: group size >= 1 */
    int64_t scale_cols;    /* UQ_W_Q4: columns of scales (see segments above) */
    const float *bias;     /* (rows) or NULL */
    const uint16_t *w16;   /* UQ_W_F16: (rows, cols) row-major IEEE half, converted exactly to float on the fly */
    int32_t layout;        /* UQ_W_Q4: uq_q4_layout (0 = the row-major format; UQ_Q4_R16: uq_q4_repack_r16) */
    int64_t nseg_out, nseg_in; /* UQ_Q4_R16: the segments the layout was built for (calls must use them) */
} uq_linear;

/*
 * Kernel layout of int4 weights (UQ_Q4_R16; built once at model load by uq_q4_repack_r16 from the row-major
 * format, the same codes and scales in another order; like llama.cpp's "R4/R8" repacked formats).
 * For nseg_out output segments of seg_out rows and nseg_in input segments of seg_in columns: rows are taken
 * per output segment in blocks of 16 (rb = ceil(seg_out/16) blocks per segment; rows past seg_out are padding),
 * columns per input segment in chunks of 8 (cc = ceil(seg_in/8) per segment; padding past seg_in).
 * Block b = so*rb + i holds rows so*seg_out + 16i + l (l < 16) as nseg_in*cc chunks of 64 bytes, one
 * contiguous stream; chunk k = si*cc + j (columns si*seg_in + 8j + m, m < 8) is
 *   byte 4l + m = q[l][m] | q[l][m + 4] << 4   (m < 4; padding codes 8),
 * i.e. 32-bit lane l holds row l's 8 codes: one vpdpbusd / vpmaddubsw per 4 columns gives 16 / 8 row sums
 * with no horizontal reduction, and kept prefixes (keep_out rows, keep_in columns per segment) are prefixes
 * of blocks and of chunk runs. Scales: block b, scale column c (< scale_cols, as in the row-major format):
 * 16 float16 values (one per row, padding 0) at (b * scale_cols + c) * 16. Needs group % 8 == 0.
 * Sizes: packed nseg_out*rb blocks of nseg_in*cc*64 bytes; scales nseg_out*rb*scale_cols*16 float16 values.
 * Numerics with fp32 activations (every path, bit-identical, including the float64-free _ref twins): per row,
 * per kept group in order, gs = 0; gs = fma((float)(q - 8), x[c], gs) over the group's kept columns in order;
 * tot = fma(gs, scale, tot); y = tot (+ bias). int8 activations: exactly the W4A8 sums below.
 */
#define UQ_Q4_R16_ROWS 16
#define UQ_Q4_R16_COLS 8
/* Geometry of the R16 layout of a (rows, cols) int4 weight: *nblk blocks of *blk_bytes bytes, *nscales scales.
 * UQ_ERR_ARG (sizes < 1, NULL), UQ_ERR_SHAPE (segments do not divide rows/cols, group % 8 != 0). */
uq_status uq_q4_r16_size(int64_t rows, int64_t cols, int64_t group, int64_t scale_cols, int64_t nseg_out,
                         int64_t nseg_in, int64_t *nblk, int64_t *blk_bytes, int64_t *nscales);
/* Repacks a row-major int4 weight L (validated like uq_linear_forward) into caller-allocated packed
 * (nblk * blk_bytes) and scales (nscales) of uq_q4_r16_size. Statuses as uq_q4_r16_size. */
uq_status uq_q4_repack_r16(const uq_linear *L, int64_t nseg_out, int64_t nseg_in, uint8_t *packed,
                           uint16_t *scales);

/* The kept input columns of an R16 int4 weight as an R16 weight of their own: columns [si*seg_in, si*seg_in + keep_in)
 * of every input segment si (rows, blocks, group and segment counts unchanged), i.e. the weight a model loaded at
 * that keep holds. Its whole chunks are copied as they are, so a linear call on it at keep_in (= its segment width)
 * reads the same bytes and scales, in the same order, as a call on L at keep_in, and gives the same results bit
 * for bit on every path; but the bytes it streams are contiguous (on L a kept prefix of every head is a run of
 * chunks followed by skipped ones, which hardware prefetchers fetch too). Used by the runtime for the mixers'
 * output projections (o_proj, Mamba out_proj) below their stored keep (uq_hy_set_keep).
 * _size: *packed_bytes and *nscales (float16 values) of the copy. UQ_ERR_ARG (NULL, not R16 int4), UQ_ERR_RANGE
 * (keep_in outside [1, seg_in], or odd with nseg_in > 1), UQ_ERR_SHAPE (scale_cols inconsistent).
 * uq_q4_r16_prefix_in: fills caller-allocated packed / scales of those sizes and *out (pointing at them; bias
 * shared with L). */
uq_status uq_q4_r16_prefix_in_size(const uq_linear *L, int64_t keep_in, int64_t *packed_bytes, int64_t *nscales);
uq_status uq_q4_r16_prefix_in(const uq_linear *L, int64_t keep_in, uint8_t *packed, uint16_t *scales, uq_linear *out);

/* y = x W_sel^T + b_sel with the segment selection described above. x (T, nseg_in*keep_in),
 * y (T, nseg_out*keep_out), caller-allocated, must not overlap. OpenMP over output rows.
 * UQ_ERR_ARG (NULL, T < 1, bad kind), UQ_ERR_SHAPE (segments do not divide rows/cols, keep outside
 * [1, seg], int4 scale_cols inconsistent, odd int4 seg_in with nseg_in > 1). */
uq_status uq_linear_forward(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                            int64_t nseg_in, int64_t keep_in, float *y);
/* Plain reference twin (float64 accumulation, no threads, no blocking): the oracle of uq_linear_forward. */
uq_status uq_linear_forward_ref(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out,
                                int64_t keep_out, int64_t nseg_in, int64_t keep_in, float *y);

typedef enum { UQ_ROPE_DEFAULT = 0, UQ_ROPE_LLAMA3 = 1 } uq_rope_type;

/* out_nll (T) float64: -log softmax(logits[t])[targets[t]], log-sum-exp accumulated in float64.
 * logits (T, vocab). UQ_ERR_RANGE on a target outside [0, vocab), UQ_ERR_NUMERIC on NaN logits. */
uq_status uq_nll(const float *logits, int64_t T, int64_t vocab, const int32_t *targets, double *out_nll);

/* Next-token sampling from logits (vocab). temperature <= 0: greedy (first maximal index; the RNG is not
 * advanced). Otherwise softmax(logits / temperature) in float64, restricted to the smallest set of most
 * probable tokens whose mass reaches top_p (0 < top_p <= 1; ties broken by lower id), drawn with one
 * splitmix64 step of the caller-held *rng. UQ_ERR_ARG (top_p outside (0, 1], NULL), UQ_ERR_NUMERIC (NaN). */
uq_status uq_sample(const float *logits, int64_t vocab, double temperature, double top_p, uint64_t *rng,
                    int32_t *out_id);
/* One splitmix64 step: returns a uniform double in [0, 1) and advances *rng (any seed is valid). */
double uq_rng_uniform(uint64_t *rng);

/* ---------------------------------------------------------------- kernels (kernels/dispatch.c) ---- */
/*
 * Kernel paths, chosen once per process from the CPU's features (never -march=native):
 *   "ref"    plain C (the _ref twins: 8-lane mul+add dots, scalar int8)
 *   "avx2"   AVX2 + FMA + F16C (8-lane FMA dots)
 *   "avx512" AVX-512 F/BW/VL + VNNI (16-lane FMA dots, vpdpbusd int8 GEMM)
 * "auto" takes the best the CPU has. Environment, read at the first kernel use (uq_kernels_init):
 *   UNIQL_KERNELS=auto|ref|avx2|avx512   (a path the CPU lacks or an unknown name is an error returned by
 *                                        uq_kernels_init, hence by uq_hy_model_init / uq_linear_forward)
 *   UNIQL_Q4_ACT=auto|fp32|int8          activations of int4 linears (auto, the default: int8 where the CPU has
 *                                        int8 dot products, AVX2 or AVX-512 VNNI, else fp32; see below)
 *   UNIQL_NUM_THREADS=n                  OpenMP threads of the kernels (default omp_get_max_threads());
 *                                        when given, OpenBLAS is set to the same count.
 * Numerics per path (each output element's operations depend only on its own row and token, so the
 * determinism guarantee above holds within a path; different paths differ by float rounding only):
 *   fp32 / fp16 weights: dot over the selected columns with V lanes (ref 8 mul+add, avx2 8 FMA, avx512 16
 *     FMA; lane l takes columns = l mod V of each segment, in order), lanes reduced by a fixed tree, + bias.
 *     fp16 weights are converted exactly (F16C) before the multiply.
 *   int4, fp32 activations (W4A32, the default on CPUs without AVX2): ref = per group dot of (q - 8) with x,
 *     times the scale; avx2/avx512 = the fp32 dot above on fl((q - 8) * scale) with columns taken in pieces of 2V
 *     (lane l: column 2l then 2l + 1 of the piece).
 *   int4, int8 activations (W4A8, UQ_Q4_ACT_INT8, the default on AVX2 / AVX-512 CPUs): per token and group
 *     (the weight's groups inside each kept segment), xs = max|x| / 127, xq = rint(x * (127 / max|x|)) (int8, 0 when max|x| = 0);
 *     isum = sum (q - 8) xq exactly in int32; y = sum over groups in order of (float)isum * (ws * xs), + bias.
 *     Integer sums make this bit-identical on every path (ref, avx2 maddubs, avx512 vpdpbusd).
 *   int4 in the R16 kernel layout (the runtime's transformer linears): fp32 activations per group with FMA
 *     (see UQ_Q4_R16 above), bit-identical on every path; int8 activations as W4A8 above.
 * W4A8 trades ~0.3-1% relative error on the linear outputs (SmolLM2-135M int4 perplexity +1.3% at rate 0,
 * +3-4% at 15-35%) for 2-4x cheaper int4 arithmetic (llama.cpp's Q4_0 x Q8_0 does the same). W4A32 is the exact
 * mode (the paper's numbers are W4A16): uniql.compress / quantize_artifact / finetune always run it, so
 * artifacts do not depend on the CPU; pick it for inference with UNIQL_Q4_ACT=fp32 or uq_kernels_set_q4_act.
 * These settings are process-wide: change them only while no forward pass runs.
 */
typedef enum { UQ_Q4_ACT_FP32 = 0, UQ_Q4_ACT_INT8 = 1, UQ_Q4_ACT_AUTO = 2 /* setter only */ } uq_q4_act;

/* Reads the environment once (later calls return the first result). All three variables are read and each valid
 * one takes effect; the status names the first invalid one: UQ_ERR_ARG (unknown UNIQL_KERNELS / UNIQL_Q4_ACT
 * value or bad UNIQL_NUM_THREADS, naming the variable and value) or UQ_ERR_UNSUPPORTED (the forced path needs CPU
 * features this machine lacks, named). After a failure the kernels run the ref path until uq_kernels_set. */
uq_status uq_kernels_init(void);
/* Forces a path ("auto", "ref", "avx2", "avx512"). UQ_ERR_ARG unknown name, UQ_ERR_UNSUPPORTED CPU lacks it. */
uq_status uq_kernels_set(const char *name);
/* Name of the current path ("ref", "avx2", "avx512"); initialises with the environment if needed. */
const char *uq_kernels_name(void);
/* *out = 1 when the CPU (and OS) support the path, else 0. UQ_ERR_ARG on an unknown name. */
uq_status uq_kernels_available(const char *name, int *out);
/* Activation mode of int4 linears (uq_q4_act; AUTO picks the CPU's default, the getter returns FP32 or INT8).
 * UQ_ERR_ARG on another value. */
uq_status uq_kernels_set_q4_act(int mode);
int uq_kernels_q4_act(void);
/* Threads used by the kernels (n >= 1; also sets OpenBLAS' count). UQ_ERR_ARG when n < 1. */
uq_status uq_kernels_set_threads(int n);
int uq_kernels_threads(void);

/* Benchmarks (for uniql.bench; they time with omp_get_wtime and report the best of reps >= 1).
 * Read bandwidth: streams a buffer of `bytes` (>= 1 MiB; allocated and touched inside) with the widest
 * vector loads available, split over nthreads threads (4 concurrent streams each); *gbps = bytes / best
 * time / 1e9. */
uq_status uq_bench_read_bw(size_t bytes, int reps, int nthreads, double *gbps);
/* Arithmetic peak of one register-only loop per thread (12 independent accumulators): which = 0 fp32 FMA
 * (AVX-512 or AVX2), 1 int8 dot products (vpdpbusd with AVX-512 VNNI, else AVX2 vpmaddubsw: 32 u8 x s8
 * products summed in int16 pairs, its widening not counted); *gmacs = multiply-adds per second / 1e9 over nthreads.
 * UQ_ERR_UNSUPPORTED when the CPU lacks the instructions. */
uq_status uq_bench_peak(int which, int nthreads, double *gmacs);
/* Best time of uq_linear_forward(L, x, T, segments, keeps, y) over reps calls (y caller-allocated). */
uq_status uq_bench_linear(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                          int64_t nseg_in, int64_t keep_in, float *y, int reps, double *best_s);
/* OpenBLAS on the whole (rows, cols) weight dequantized/converted to fp32: *dequant_s = time to build the
 * fp32 copy (once), *blas_s = best time of cblas_sgemv (T = 1) or cblas_sgemm (T > 1) computing
 * y (T, rows) = x (T, cols) W^T. Any nthreads <= 0 leaves OpenBLAS' thread count unchanged. */
uq_status uq_bench_blas(const uq_linear *L, const float *x, int64_t T, float *y, int reps, int nthreads,
                        double *dequant_s, double *blas_s);

/* ================================================ structured sorting and allocation (compress/) ====== */
/* (owned by the sorting implementation: csrc/compress/sort*.c)
 * Float64 statistics in, permutations / re-parameterised weights out (docs/design.md §3).
 * Conventions: a permutation perm (int64) says "new position k <- original index perm[k]"; every sort is a
 * STABLE DESCENDING argsort (equal scores keep ascending original index; -0.0 == 0.0); NaN/Inf inputs are
 * UQ_ERR_NUMERIC naming the argument and index; NULL / non-positive sizes / bad scalars are UQ_ERR_ARG;
 * inconsistent sizes (n_heads not a multiple of n_kv, odd d for RoPE pairs ...) are UQ_ERR_SHAPE.
 * Symmetric statistics (n, n) are read through their LOWER triangle only (as in linalg/). Outputs are
 * caller-allocated and written only on success unless stated otherwise. */

/* Standard keep-size granularities (docs/design.md §3.1). */
#define UQ_GRAN_MLP 128       /* MLP intermediate channels */
#define UQ_GRAN_HEAD 16       /* attention head dims (Q/K and V/O ranks) */
#define UQ_GRAN_SSM_STATE 16  /* Mamba2 state dim N */
#define UQ_GRAN_SSM_HEAD 2    /* Mamba2 head channels P */

/* *out = the keep size of an axis of `full` elements at keep ratio rho (= 1 - pruning rate) and granularity
 * g (1 <= g <= full, 0 <= rho <= 1):
 *     k = g * rint(rho * full / g)          (round half to even, computed in double as written)
 *     k = min(max(k, g), full)               (at least one granule, never more than full)
 *     rho == 1  ->  k = full exactly        (rate 0 is always the whole, lossless axis)
 * When full is a multiple of g every k is a multiple of g. When it is not (e.g. full = 100, g = 16) the
 * reachable sizes are g, 2g, ..., g*floor(full/g) and full itself (only at rho == 1 or when rounding up
 * would pass full); k never exceeds full. UQ_ERR_ARG: full < 1, g outside [1, full], rho outside [0, 1]/NaN. */
uq_status uq_keep_size(int64_t full, double keep_ratio, int64_t granularity, int64_t *out);

/* *out = the granularity to use for an axis of `size` elements (the small-model rule, docs/design.md §3.1):
 *     g = min(granularity, size / 8)  (integer division), rounded DOWN to a power of two (0 stays 0),
 *     g = max(g, min_granularity).
 * For large models this returns `granularity` itself (14336 -> 128, d = 128 -> 16, N = 128 -> 16,
 * P = 64 -> 2). min_granularity keeps structural units whole: 2 for head dims with full RoPE (whole pairs),
 * 4 for partial RoPE (a keep size r splits into r/4 rotary pairs + r/2 pass dims), 1 without RoPE or for
 * MLP channels, 2 for SSM head channels. Requires 1 <= granularity, 1 <= min_granularity <= size
 * (UQ_ERR_ARG otherwise). */
uq_status uq_keep_granularity(int64_t size, int64_t granularity, int64_t min_granularity, int64_t *out);

/* perm (n) int64 = stable descending argsort of scores (n) float64: scores[perm[0]] >= scores[perm[1]] >= ...,
 * ties in ascending index order (same as numpy.argsort(-s, kind="stable")). n >= 1; NaN/Inf: UQ_ERR_NUMERIC.
 * Internal workspace n int64. */
uq_status uq_argsort_desc(const double *scores, int64_t n, int64_t *perm);

/* MLP ridge leverage (docs/design.md §3.2): scores (n) = diag(G (G + lambda I)^{-1})
 *     s_i = 1 - lambda * [(G + lambda I)^{-1}]_ii     via uq_linalg_spd_inv_diag (Cholesky, no inverse)
 * G (n, n) float64 = second moment of the down_proj input (PSD; lower triangle read), lambda > 0 finite
 * (compress uses 1). s_i lies in [0, 1) up to rounding (~1e-16 absolute). UQ_ERR_NUMERIC when G + lambda I is not
 * positive definite (G not PSD) or G holds NaN/Inf. The permutation is uq_argsort_desc(scores). */
uq_status uq_sort_ridge_scores(const double *G, int64_t n, double lambda, double *scores);

/* Q/K head-dim layouts (attention with RoPE):
 *   UQ_ROPE_FULL     HF rotate-half over the whole head: dim i (< d/2) pairs with i + d/2 at frequency i.
 *                    Runtime layout (pair-interleaved): row 2j <- dim p_j, row 2j+1 <- dim p_j + d/2, where
 *                    p (d/2) = pairs sorted by t_j = s_j + s_{j+d/2} descending; freq[g][j] = p_j.
 *                    Keep size r (even): the first r rows of each head = pairs p_0 .. p_{r/2-1}, whole.
 *   UQ_ROPE_PARTIAL  Bamba (partial_rotary_factor 0.5): rotary block = dims [0, d/2), dim i (< d/4) pairs with
 *                    i + d/4 at frequency i; pass dims [d/2, d) are not rotated. d % 4 == 0.
 *                    Layout: rows [0, d/2) = rotary pairs interleaved (row 2j <- p_j, 2j+1 <- p_j + d/4, p
 *                    sorted by s_j + s_{j+d/4}, freq[g][j] = p_j, j < d/4); rows [d/2, d) = pass dims sorted
 *                    by their own scores s[d/2:d] (row d/2 + k <- d/2 + q_k).
 *                    Keep size r (multiple of 4, whole pairs): r/2 rotary rows (r/4 whole pairs) and
 *                    r/2 pass rows, i.e. rows [0, r/2) U [d/2, d/2 + r/2) -- NOT a prefix: use
 *                    uq_sort_qk_keep_rows.
 *   UQ_ROPE_NONE     no RoPE (Nemotron-H): row k <- dim argsort_desc(s)[k]; no freq map; keep = first r rows. */
typedef enum { UQ_ROPE_FULL = 0, UQ_ROPE_PARTIAL = 1, UQ_ROPE_NONE = 2 } uq_rope_mode;

/* Number of RoPE pairs per head stored in the freq map: d/2 (FULL), d/4 (PARTIAL), 0 (NONE). */
int64_t uq_sort_qk_npairs(uq_rope_mode mode, int64_t d);

/* RoPE-aware Q/K sort of every KV group (docs/design.md §3.2). Inputs are DIAGONALS of post-RoPE second moments:
 *   cq_diag (n_heads, d): cq_diag[h][i] = C_{Q,h,ii};  ck_diag (n_kv, d): ck_diag[g][i] = C_{K,g,ii}
 * (both >= 0, finite). Q head h belongs to KV group g = h / (n_heads / n_kv) (HF repeat_kv), n_heads % n_kv
 * == 0. Per-dim score of group g:  s_i = sqrt(ck_diag[g][i] * sum_{h in g} cq_diag[h][i]).
 * Outputs (caller-allocated):
 *   scores  (n_kv, d) float64, may be NULL;
 *   freq    (n_kv, uq_sort_qk_npairs(mode, d)) int32 = original frequency index of the pair at slot j
 *           (ignored for UQ_ROPE_NONE, may be NULL there);
 *   row_perm (n_kv, d) int64: new row k of every head of group g (all its Q heads and its K head, weights
 *           and biases) <- original HF row row_perm[g][k] of that head. Layouts: see uq_rope_mode.
 * UQ_ERR_SHAPE: d odd (FULL), d % 4 != 0 (PARTIAL), n_heads % n_kv != 0; UQ_ERR_ARG: bad mode, negative
 * diagonal entry, NULL; UQ_ERR_NUMERIC: NaN/Inf. */
uq_status uq_sort_qk(const double *cq_diag, const double *ck_diag, int64_t n_heads, int64_t n_kv, int64_t d,
                     uq_rope_mode mode, double *scores, int32_t *freq, int64_t *row_perm);

/* rows (r) int64 = the rows of a head (in the sorted runtime layout) kept at keep size r, ascending:
 * FULL / NONE: 0 .. r-1; PARTIAL: [0, r/2) U [d/2, d/2 + r/2). The kept pairs are the first r/2 (FULL) or
 * r/4 (PARTIAL) entries of freq. UQ_ERR_RANGE: r outside [1, d], r odd (FULL), r % 4 != 0 (PARTIAL). */
uq_status uq_sort_qk_keep_rows(uq_rope_mode mode, int64_t d, int64_t r, int64_t *rows);

/* Quantization-aware SVD of attention V/O (docs/design.md §3.2), GQA, per KV group g:
 *   V_g (n, d) = (rows g*d .. g*d+d-1 of v_proj)^T,  O_h (d, n) = (columns h*d .. h*d+d-1 of o_proj)^T,
 *   G^{1/2}, G^{-1/2} from uq_linalg_sqrtm(G, eig_floor) (eigenvalues floored; compress uses 1e-6),
 *   thin SVD  G^{1/2} V_g = U S W^T  (S descending),
 *   default:                 V_g' = G^{-1/2} U S,         O_h' = W^T O_h        (S absorbed into V)
 *   UQ_QASVD_SPLIT_SIGMA:    V_g' = G^{-1/2} U S^{1/2},   O_h' = S^{1/2} W^T O_h (ablation)
 *   UQ_QASVD_JOINT_O:        a second SVD  S W^T [O_h for h in g] = U2 S2 [W2_h^T ...] (d x (heads*n)),
 *                            V_g' = G^{-1/2} U U2 S2, O_h' = W2_h^T: the optimal whitened rank-r product
 *                            for the whole group (for MHA, n_heads == n_kv: the optimal rank-r V.O per head);
 *                            combines with SPLIT_SIGMA (S2^{1/2} on both sides).
 * New value dim k of group g is ordered by singular value (sv[g][k] descending: S, or S2 with JOINT_O).
 * At full rank V_g' O_h' = V_g O_h exactly (a change of basis); keeping the first r value dims of each
 * group (rows of v_proj, columns of each head's o_proj slice) keeps the best whitened rank-r subspace.
 * Biases: bv (n_kv*d) folds into o_proj:  bo' = bo + sum_h bv_{g(h)} O_h  (original O_h; exact because
 * attention weights sum to one; independent of the kept rank), and bv' = 0.
 * Shapes: G (n, n) float64; wv, wv_out (n_kv*d, n); wo, wo_out (n, n_heads*d); bv, bv_out (n_kv*d);
 * bo, bo_out (n); sv (n_kv, d) float64. bv, bo, bv_out, sv may be NULL; bo_out may be NULL only when bv and
 * bo are both NULL (otherwise UQ_ERR_ARG). Outputs may alias their inputs (in-place update is allowed).
 * Requires 1 <= d <= n (UQ_ERR_UNSUPPORTED for d > n), n_heads % n_kv == 0 (UQ_ERR_SHAPE), eig_floor > 0.
 * _f32: float32 weights in/out, float64 inside; _f64: float64 throughout. Workspace ~ 2 n^2 + (heads/kv+4)
 * n d doubles (+ 3 n^2 inside sqrtm). Uses BLAS/LAPACK: never call inside an OpenMP region. */
#define UQ_QASVD_SPLIT_SIGMA 1
#define UQ_QASVD_JOINT_O 2
uq_status uq_qasvd_vo_f32(const double *G, int64_t n, const float *wv, const float *bv, const float *wo,
                          const float *bo, int64_t n_heads, int64_t n_kv, int64_t d, int32_t flags,
                          double eig_floor, float *wv_out, float *bv_out, float *wo_out, float *bo_out,
                          double *sv);
uq_status uq_qasvd_vo_f64(const double *G, int64_t n, const double *wv, const double *bv, const double *wo,
                          const double *bo, int64_t n_heads, int64_t n_kv, int64_t d, int32_t flags,
                          double eig_floor, double *wv_out, double *bv_out, double *wo_out, double *bo_out,
                          double *sv);

/* Mamba2 state-dim sort, per group (docs/design.md §3.2):  s[g][m] = sum_{h in g} sqrt(dB_diag[h][m]) *
 * sqrt(c_diag[g][m]) with head h in group g = h / (H / G) (HF Mamba2 repeat_interleave of B/C over heads):
 *   dB_diag (H, N): dB_diag[h][m] = E[(Delta_h B_m)^2], the diagonal of the Delta_h-weighted second moment of
 *                   the group's B (after conv1d + SiLU; Delta = softplus(dt + dt_bias), not raw dt);
 *   c_diag  (G, N): c_diag[g][m] = E[C_m^2] of the group's C (after conv1d + SiLU).
 * Outputs scores (G, N) float64 (may be NULL) and perm (G, N) int64 (per-group local state index, applied
 * to B rows, C rows of in_proj and their conv1d channels). H % G == 0, entries >= 0. */
uq_status uq_sort_ssm_state(const double *dB_diag, const double *c_diag, int64_t H, int64_t G, int64_t N,
                            double *scores, int64_t *perm);

/* Mamba2 head-channel sort (docs/design.md §3.2): ridge leverage (as uq_sort_ridge_scores) over the H*P features of
 * the second moment Gm (H*P, H*P) float64 (feature index h*P + p; e.g. of the chunk-local states, or of the
 * out_proj input for the plain variant), then per head a stable descending argsort of its P scores:
 * perm (H, P) int64 = head-local channel index (0..P-1), the same count P' is kept in every head; applied to
 * rows of W_x, W_z, columns of W_out, the gated-norm weight and the x conv channels. scores (H*P) may be
 * NULL. lambda > 0 (1, or 1e-4 for pure Mamba2). */
uq_status uq_sort_ssm_head_channels(const double *Gm, int64_t H, int64_t P, double lambda, double *scores,
                                    int64_t *perm);

/* Block importance (docs/design.md §3.4) of L layers from the last-token vectors of B calibration sequences:
 *   x, y (L, B, n) float32: layer l's input and output; importance[l] = 1 - mean_b cos(x[l][b], y[l][b]),
 *   cos(a, c) = a.c / sqrt(max(|a|^2 |c|^2, 1e-16))  (torch.nn.functional.cosine_similarity, eps 1e-8),
 * accumulated in float64. importance (L) float64, in [0, 2]. UQ_ERR_NUMERIC on NaN/Inf. */
uq_status uq_alloc_block_importance(const float *x, const float *y, int64_t L, int64_t B, int64_t n,
                                    double *importance);

/* Layer-wise keep ratios (docs/design.md §3.6) for global keep ratio rho_bar in [0, 1]:
 *   phi_l = L (1 - rho_bar) softmax(-importance / eps)_l,  phi_l = clamp(phi_l, 0, max_prune),
 *   keep_ratios[l] = 1 - phi_l.
 * Without clamping mean(phi) = 1 - rho_bar exactly; the clamp is a plain clip (no redistribution: the mean
 * pruning then falls short of 1 - rho_bar, as in the reference). Lower importance -> more pruning.
 * importance (L) finite; eps > 0 finite (uniql: 0.1); max_prune in [0, 1] (uniql: 0.85). */
uq_status uq_alloc_keep_ratios(const double *importance, int64_t L, double global_keep, double eps,
                               double max_prune, double *keep_ratios);

/* ----- residual-stream rotation (compress/rotate.c): Q = diag(s) (H_p (x) R_m) / sqrt(p), n = p m, p the largest
 * power of two dividing n, H_p Sylvester Hadamard, R_m random orthogonal; Q Q^T = I. */
/* *m = n / (largest power of two dividing n): the size of R. */
uq_status uq_rotation_size(int64_t n, int64_t *m);
/* Random signs (n) and R (m x m, row-major) of the rotation of size n from a seed (deterministic). */
uq_status uq_rotation_init(int64_t n, uint64_t seed, double *signs, double *R);
/* In place on W (rows, cols) float32: axis 0 -> every row v <- (v .* scale) Q (cols == n; scale (n) or NULL),
 * axis 1 -> every column c <- Q^T c (rows == n; scale must be NULL). float64 inside; NaN/Inf rejected. */
uq_status uq_rotate(float *W, int64_t rows, int64_t cols, int axis, const float *scale, const double *signs,
                    const double *R, int64_t n);

/* ============================================== the runtime: every layer kind (runtime/ssm.c) ====== */
/*
 * LlamaForCausalLM, Qwen2ForCausalLM (every layer attention + gated-SiLU MLP, RoPE over the whole head),
 * Mamba2ForCausalLM, NemotronHForCausalLM and BambaForCausalLM at any per-layer keep sizes, switchable
 * between tokens: one model / state, one forward loop (prefill, decode, batched decode in ssm_batch.c), one
 * attention kernel. Weights are never copied (descriptors point into caller-owned arrays that must outlive
 * the model). Kernels: csrc/kernels/ssm_kernels.c (conv1d, scan, gated norm), ops.c (RMSNorm, RoPE, attention,
 * embedding), linear.c (uq_linear_forward).
 *
 * A model is a stack of layers x = x + mixer(RMSNorm(x) * norm_l), then for layers with an ffn_norm a second
 * sub-block x = x + MLP(RMSNorm(x) * ffn_norm_l) (Bamba); logits = RMSNorm(x) * final_norm  W_lm^T, or with a
 * final mix F (uq_hy_weights.final_mix) logits = ((RMSNorm(x) * final_norm) F^T) W_lm^T.
 * Mixer kinds: UQ_HY_MAMBA (Mamba2 mixer), UQ_HY_ATTN (causal GQA attention, optional (partial) RoPE),
 * UQ_HY_MLP (the MLP itself is the mixer: Nemotron-H '-' layers). MLP: silu(x Wg^T) * (x Wu^T) Wd^T
 * (UQ_HY_ACT_SILU_GATED) or relu(x Wu^T)^2 Wd^T (UQ_HY_ACT_RELU2). All RMSNorms use cfg.norm_eps.
 *
 * Mamba2 mixer (H heads of P channels, G groups of state size N, conv width K), per token:
 *   [z | x | B | C | dt] = h W_in^T (+ b)          rows z (H*P), x (H*P), B (G*N), C (G*N), dt (H)
 *   [x | B | C] = silu(causal depthwise conv1d of width K over time (+ conv bias)), rolling state of K-1 inputs
 *   Delta_h = clamp(softplus(dt_h + dt_bias_h), dt_min, dt_max)   (softplus(v) = v for v > 20, as torch)
 *   A_h = -exp(A_log_h);  head h reads group g = h / (H/G)
 *   S_h[p][n] <- exp(Delta_h A_h) S_h[p][n] + (Delta_h B_g[n]) x_h[p]
 *   y_h[p] = sum_n C_g[n] S_h[p][n] + D_h x_h[p]
 *   y = y * silu(z), RMS-normalised over G groups of H*P/G consecutive channels (norm after the gate, as HF's
 *   MambaRMSNormGated) times gnorm;  out = y W_out^T (+ b).
 * Prefill (T > 1 tokens in one call) uses the chunked SSD form over chunks of cfg.chunk_size tokens aligned to
 * the first token of the call (intra-chunk C B^T "attention" + inter-chunk state passing); a single token
 * uses the recurrence. Both compute the same function (float rounding aside); UQ_HY_OPT_SEQUENTIAL_SCAN
 * makes prefill use the recurrence too (the _ref path). Unlike transformers' torch decode path, the
 * dt clamp is applied in decode as well (it is in prefill), so prefill and decode agree when it binds.
 *
 * Elastic layout (docs/design.md §3.3 and §5). Per Mamba layer: stored head channels Ps (= out_proj cols / H)
 * and state size Ns (from the in_proj rows 2*H*Ps + 2*G*Ns + H); keeps P' <= Ps (first P' channels of every
 * head: rows of z and x, x conv channels, gnorm entries, out_proj columns) and N' <= Ns (first N' of every
 * group: B and C rows and conv channels). The gated norm normalises over the kept channels (group size
 * H*P'/G). SSM state (H, Ps, Ns) and conv state (H*Ps + 2*G*Ns, K-1) are held at the stored sizes.
 * By default x, B, C, their conv and the state are computed at the stored sizes whatever the keep (each
 * state element depends only on its own channel, so the kept prefix is exactly what a truncated model
 * computes and keep sizes can change between tokens without invalidating the state, as the KV cache);
 * only z, the read-out, the gated norm and out_proj shrink. With UQ_HY_OPT_KEPT_STATE only the kept channels
 * are computed (faster; state channels outside the keep then go stale, so raising a keep mid-sequence is
 * approximate until the next reset).
 *
 * Attention layers: stored head dim R (= q rows / num_heads) of which R_rot rows are rotary (rot_rows;
 * 0 without RoPE). Head layout (runtime convention): rows [0, R_rot) are RoPE pairs interleaved (rows 2j,
 * 2j+1 = pair j, rotating at original frequency index freq_map[kv][j], identity when NULL, angle
 * theta^(-2f/rope_dim) * pos), rows [R_rot, R) the pass (not rotated) dims. For Bamba (rope_dim = d/2) an HF
 * head [rot (d/2, rotate-half) | pass (d/2)] becomes [pair-interleaved rot | pass]. A keep r uses
 * r_rot = r * R_rot / R rotary rows (must be an even integer) and r - r_rot pass rows of every Q/K head
 * (rows [0, r_rot) U [R_rot, R_rot + r - r_rot)), the first r rows of every V head and the first r columns of
 * every head's R-wide o_proj segment. K and V are always computed and cached at width R. Softmax scale
 * 1/sqrt(head_dim) at every keep. MLP layers / sub-blocks: stored size K (up rows), keep k <= K (prefix).
 *
 * Determinism: every output element's float operations depend only on that element's inputs and the keep
 * sizes, so a model built from truncated arrays and a full model set to the same keeps give identical logits.
 */
typedef enum { UQ_HY_MAMBA = 0, UQ_HY_ATTN = 1, UQ_HY_MLP = 2 } uq_hy_kind;
typedef enum { UQ_HY_ACT_SILU_GATED = 0, UQ_HY_ACT_RELU2 = 1 } uq_hy_act;

#define UQ_HY_OPT_SEQUENTIAL_SCAN 1 /* prefill with the recurrence (reference path) */
#define UQ_HY_OPT_KEPT_STATE 2      /* compute x/B/C/conv/state only for kept channels (see above) */
#define UQ_HY_OPT_NO_COMPACT 4      /* no compact output-projection copies (uq_hy_set_keep): read the stored weights */
#define UQ_HY_MAX_CONV 64           /* largest conv width K */

typedef struct {
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t num_layers;
    double norm_eps;              /* every RMSNorm, gated norm included */
    /* Mamba2 mixers (validated when a layer has kind UQ_HY_MAMBA) */
    int64_t ssm_heads;            /* H */
    int64_t ssm_head_dim;         /* original P (stored Ps <= P) */
    int64_t ssm_groups;           /* G, divides H */
    int64_t ssm_state;            /* original N (stored Ns <= N) */
    int64_t conv_kernel;          /* K in [1, UQ_HY_MAX_CONV] */
    int64_t chunk_size;           /* SSD chunk length (>= 1) */
    double dt_min, dt_max;        /* clamp of Delta (time_step_limit; 0 and INFINITY when none) */
    /* attention (validated when a layer has kind UQ_HY_ATTN) */
    int64_t num_heads, num_kv_heads;
    int64_t head_dim;             /* original d: softmax scale */
    int64_t rope_dim;             /* rotary dims of an original head: 0 (none), d (full) or d/2 (Bamba); even */
    double rope_theta;
    int32_t rope_type;            /* uq_rope_type; llama3: factor, low/high freq factors, original max positions */
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_pos;
    /* MLP (validated when a layer has an MLP) */
    int64_t intermediate_size;    /* original D_I (stored K <= D_I) */
    int32_t mlp_act;              /* uq_hy_act */
} uq_hy_config;

typedef struct {
    int32_t kind;                 /* uq_hy_kind of the mixer */
    const float *norm;            /* (hidden) RMSNorm weight before the mixer */
    /* UQ_HY_MAMBA */
    uq_linear in_proj;            /* (2*H*Ps + 2*G*Ns + H, hidden), bias optional; ignored when in_part is given */
    uq_linear in_part[5];         /* or its z (H*Ps), x (H*Ps), B (G*Ns), C (G*Ns), dt (H) rows as five descriptors
                                   * (in_part[0].rows > 0), each any layout (R16 built for the segments H, H, G, G, 1):
                                   * the fused weight's rows are read as row-major views, these are not */
    const float *conv_w;          /* (H*Ps + 2*G*Ns, K) channels [x | B | C] */
    const float *conv_b;          /* (H*Ps + 2*G*Ns) or NULL */
    const float *dt_bias, *A_log, *D; /* (H) each */
    const float *gnorm;           /* (H*Ps) gated RMSNorm weight */
    uq_linear out_proj;           /* (hidden, H*Ps), bias optional */
    /* UQ_HY_ATTN */
    uq_linear q, k, v, o;         /* q (nh*R, hidden), k/v (nkv*R, hidden), o (hidden, nh*R); biases optional */
    int64_t rot_rows;             /* stored rotary rows per head R_rot; 0 = R * rope_dim / head_dim */
    const int32_t *freq_map;      /* (nkv, R_rot/2) in [0, rope_dim/2) or NULL (identity); copied at init */
    /* MLP: the mixer of UQ_HY_MLP layers, or a second sub-block of any layer whose ffn_norm is not NULL */
    const float *ffn_norm;        /* (hidden) or NULL (ignored for UQ_HY_MLP) */
    uq_linear gate, up, down;     /* gate (K, hidden) (SILU_GATED only), up (K, hidden), down (hidden, K) */
} uq_hy_layer_weights;

typedef struct {
    uq_linear embed;              /* (vocab, hidden), no bias */
    const uq_hy_layer_weights *layers; /* num_layers */
    const float *final_norm;      /* (hidden) */
    uq_linear lm_head;            /* (vocab, hidden); a copy of embed for tied embeddings */
    const float *final_mix;       /* (hidden, hidden) row-major F or NULL: the head reads RMSNorm(x) * final_norm F^T
                                     (a rotated model with a tied embedding keeps its final-norm scale here) */
    const uint16_t *final_mix16;  /* or F as IEEE half bits (quantized artifacts store it so; NULL: none), run as a
                                     UQ_W_F16 linear: the same results as float32 F of the same values. At most one
                                     of final_mix / final_mix16. */
} uq_hy_weights;

typedef struct uq_hy_model uq_hy_model; /* opaque: config, descriptors, keeps, A = -exp(A_log), RoPE freqs */
typedef struct uq_hy_state uq_hy_state; /* opaque: SSM/conv states, KV caches, position, scratch */

/* Validates config and every descriptor; stored sizes come from the shapes. Full keeps, options 0.
 * UQ_ERR_ARG (NULL, non-positive size, bad kind/act, eps/theta <= 0, dt_min > dt_max, conv width outside
 * [1, UQ_HY_MAX_CONV]), UQ_ERR_SHAPE (inconsistent shapes or head counts, naming layer and tensor),
 * UQ_ERR_RANGE (freq map entry), UQ_ERR_UNSUPPORTED (R16 int4 for the embedding, a fused Mamba in_proj or a q_proj
 * under partial RoPE: these are read as row-major rows or row views; every other linear may be R16 when built
 * for the segments the runtime uses), UQ_ERR_NOMEM, or the status of uq_kernels_init. */
uq_status uq_hy_model_init(const uq_hy_config *cfg, const uq_hy_weights *w, uq_hy_model **out);
void uq_hy_model_free(uq_hy_model *m);
/* Keep sizes of layer l; a negative value leaves that one unchanged. UQ_ERR_RANGE naming layer and value:
 * a keep outside [1, stored], an attention keep whose rotary share r*R_rot/R is not an even integer, or a
 * non-negative keep for a component the layer does not have. */
uq_status uq_hy_set_keep(uq_hy_model *m, int64_t layer, int64_t mlp_keep, int64_t attn_keep,
                         int64_t ssm_head_keep, int64_t ssm_state_keep);
/* Below the stored keep, an R16 int4 o_proj / Mamba out_proj reads a kept prefix of every head's chunks, runs of
 * chunks with skipped ones between them, and the hardware prefetchers fetch the skipped ones too (a decode streamed
 * it at about half the read bandwidth). So uq_hy_set_keep also makes, for that layer, a compact copy of the kept
 * columns (uq_q4_r16_prefix_in: the same bytes and scales, contiguous; at most (1 - 1/ceil(seg_in/8)) of the
 * weight's bytes, e.g. 10/16 of each 8B-shaped o_proj at keep 80 of 128) and the forward reads it; it is freed when
 * the keep returns to the stored one, or with UQ_HY_OPT_NO_COMPACT. The logits are the same bit for bit with and
 * without it. An allocation failure is UQ_ERR_NOMEM with the layer's keeps unchanged. As every keep change, call it
 * between forwards, never during one on the same model (it frees the copy the previous keep used).
 * uq_hy_compact_bytes: *bytes = the bytes those copies hold now. UQ_ERR_ARG (NULL). */
uq_status uq_hy_compact_bytes(const uq_hy_model *m, int64_t *bytes);
/* keep[4], stored[4] (either may be NULL) = {mlp, attn, ssm_head, ssm_state}; 0 for absent components. */
uq_status uq_hy_get_keep(const uq_hy_model *m, int64_t layer, int64_t *keep, int64_t *stored);
/* Layer kind and whether it has an ffn sub-block (either pointer may be NULL). */
uq_status uq_hy_layer_info(const uq_hy_model *m, int64_t layer, int32_t *kind, int32_t *has_ffn);
/* Execution options (UQ_HY_OPT_* bits; UQ_ERR_ARG for unknown bits). */
uq_status uq_hy_set_options(uq_hy_model *m, int32_t options);
/* Current option bits (0 for NULL). */
int32_t uq_hy_get_options(const uq_hy_model *m);
uq_status uq_hy_get_config(const uq_hy_model *m, uq_hy_config *out);

/* A state for model m: per Mamba layer conv state and SSM state at stored sizes, per attention layer a KV
 * cache (n_kv, max_seq, R), scratch for token chunks of max_chunk (rounded up to a multiple of chunk_size).
 * UQ_ERR_ARG (NULL, max_seq or max_chunk < 1), UQ_ERR_RANGE (size overflow), UQ_ERR_NOMEM. */
uq_status uq_hy_state_init(const uq_hy_model *m, int64_t max_seq, int64_t max_chunk, uq_hy_state **out);
/* KV-cache element types. UQ_KV_F16: K and V rows are rounded to IEEE float16 (nearest even) when written and
 * converted back exactly when read: attention then computes, bit for bit, what it computes over a float32 cache
 * holding the rounded values, at half the cache bytes (what decode streams per token at long contexts). Values
 * beyond the float16 range (|x| >= 65520) become +-Inf. */
typedef enum { UQ_KV_F32 = 0, UQ_KV_F16 = 1 } uq_kv_dtype;
/* uq_hy_state_init with a KV cache of kv_dtype (uq_hy_state_init: UQ_KV_F32); UQ_ERR_ARG for another value. */
uq_status uq_hy_state_init_kv(const uq_hy_model *m, int64_t max_seq, int64_t max_chunk, int32_t kv_dtype,
                              uq_hy_state **out);
void uq_hy_state_free(uq_hy_state *s);
/* Forgets the sequence: position 0, SSM and conv states zeroed. */
uq_status uq_hy_state_reset(uq_hy_state *s);
/* Keeps the first pos tokens (0 <= pos <= current position) of a model without Mamba layers (their state cannot
 * go back): the next forward continues at pos and overwrites the K/V rows after it. UQ_ERR_ARG (NULL),
 * UQ_ERR_RANGE (pos), UQ_ERR_UNSUPPORTED (pos < position with a Mamba layer). */
uq_status uq_hy_state_truncate(uq_hy_state *s, int64_t pos);
/* Copies position, KV caches and SSM/conv states of src into dst, a state of another model of the same layer
 * kinds whose stored attention head dims and KV-cache dtypes may differ (converted: float16 -> float32 exactly,
 * float32 -> float16 rounded): per attention layer the first min(R_src, R_dst) dims of
 * every cached K/V row are copied, dims beyond R_src are zero (never computed for past tokens: exact again once
 * the sequence is re-prefilled); Mamba layers must have the same stored sizes. UQ_ERR_ARG (NULL), UQ_ERR_SHAPE
 * (layers, kinds or KV heads differ), UQ_ERR_UNSUPPORTED (Mamba stored sizes differ), UQ_ERR_RANGE (src position
 * > dst max_seq). */
uq_status uq_hy_state_transfer(const uq_hy_state *src, uq_hy_state *dst);
int64_t uq_hy_state_pos(const uq_hy_state *s);
size_t uq_hy_state_bytes(const uq_hy_state *s);
/* The state's uq_kv_dtype and the bytes of its KV caches (part of uq_hy_state_bytes; 0 for NULL / no attention). */
int32_t uq_hy_state_kv_dtype(const uq_hy_state *s);
size_t uq_hy_state_kv_bytes(const uq_hy_state *s);

/* Runs T new tokens (positions pos .. pos+T-1) continuing the cached state; logits of the last n_logits
 * tokens (n_logits, vocab), caller-allocated. T > 1: chunked scan (sequential with UQ_HY_OPT_SEQUENTIAL_SCAN),
 * T == 1: recurrence. On an argument error the state is unchanged. UQ_ERR_ARG (NULL, T < 1, n_logits outside
 * [1, T]), UQ_ERR_RANGE (token id, naming index and value; pos + T > max_seq), UQ_ERR_STATE (state of another
 * model). */
uq_status uq_hy_forward(const uq_hy_model *m, uq_hy_state *s, const int32_t *ids, int64_t T, int64_t n_logits,
                        float *logits);

/* Pieces for the compression pipeline. */
/* X (T, hidden) = embedding rows of ids (dequantized for int4). UQ_ERR_ARG (NULL, T < 1), UQ_ERR_RANGE (id). */
uq_status uq_hy_embed(const uq_hy_model *m, const int32_t *ids, int64_t T, float *X);
/* logits (T, vocab) = lm_head(final RMSNorm(X)) of X (T, hidden), in chunks of the state's max_chunk (the state is
 * scratch). UQ_ERR_ARG (NULL, T < 1), UQ_ERR_STATE (state of another model). */
uq_status uq_hy_head(const uq_hy_model *m, uq_hy_state *s, const float *X, int64_t T, float *logits);

/* Optional captures of uq_hy_layer_forward (caller-allocated; any may be NULL). Pc/Nc = the computed head
 * channels / state dims (stored sizes, or the keeps with UQ_HY_OPT_KEPT_STATE); P', r, k = current keeps. */
typedef struct {
    float *mixer_in;  /* (T, hidden)     RMSNorm output feeding the mixer (in_proj, q/k/v, or up/gate) */
    float *ssm_x;     /* (T, H*Pc)       Mamba x after conv1d + SiLU (head h at columns h*Pc ..) */
    float *ssm_B;     /* (T, G*Nc)       Mamba B after conv1d + SiLU */
    float *ssm_C;     /* (T, G*Nc)       Mamba C after conv1d + SiLU */
    float *ssm_dt;    /* (T, H)          Delta = clamp(softplus(dt + dt_bias)) */
    float *ssm_out;   /* (T, H*P')       gated-norm output = out_proj input */
    float *q;         /* (T, n_heads*r)  queries after RoPE (runtime layout: rotary rows interleaved, then pass) */
    float *k;         /* (T, n_kv*R)     keys after RoPE, all R stored rows of each head */
    float *attn_out;  /* (T, n_heads*r)  attention output = o_proj input */
    float *mlp_in;    /* (T, hidden)     RMSNorm output feeding the MLP (mixer of an MLP layer, or the ffn) */
    float *mlp_z;     /* (T, k)          down_proj input: silu(gate) * up, or relu(up)^2 */
} uq_hy_capture;

/* One layer over a whole causal sequence X (T, hidden) from a zero state at positions 0..T-1 (T <= max_seq;
 * chunks of the state's max_chunk, so the SSD chunks start at multiples of chunk_size), at the layer's current
 * keeps and options: Y (T, hidden) = layer(X); Y may equal X. The state is used as scratch and is reset
 * (position 0, SSM/conv states zeroed) before and after. UQ_ERR_ARG (NULL, T < 1), UQ_ERR_RANGE (layer,
 * T > max_seq), UQ_ERR_STATE (state of another model). */
uq_status uq_hy_layer_forward(const uq_hy_model *m, uq_hy_state *s, int64_t layer, const float *X, int64_t T,
                              float *Y, const uq_hy_capture *cap);

/* Calibration statistics of a Mamba2 mixer (docs/design.md §3.2), from one sequence's captures (float64 sums).
 * B/C state-dim moments, accumulated (+=) with weight `scale` (1/num_sequences gives the mean over sequences):
 *   dB_acc[h][n] += scale * sum_t (Delta_t[h] * B_t[g(h)][n])^2,   c_acc[g][n] += scale * sum_t C_t[g][n]^2,
 *   g(h) = h / (H/G). B, C (T, G*N) float32 (after conv1d + SiLU), dt (T, H) float32 = Delta; dB_acc (H, N),
 *   c_acc (G, N) float64. UQ_ERR_ARG (NULL, sizes < 1, H % G != 0), UQ_ERR_NUMERIC (NaN/Inf input). */
uq_status uq_ssm_bc_moments(const float *B, const float *C, const float *dt, int64_t T, int64_t H, int64_t G,
                            int64_t N, double scale, double *dB_acc, double *c_acc);

/* Chunk-local SSM states as samples for the state-aware head-channel score (docs/design.md §3.2):
 *   S_c[h][p][n] = sum_{t in chunk c} exp(A_h sum_{tau in c, tau > t} Delta_tau[h]) Delta_t[h] x_t[h][p] B_t[g(h)][n]
 * with A_h = -exp(A_log[h]), chunks [c*chunk, min((c+1)*chunk, T)) (the last one may be shorter), computed in
 * float64. Output S (nc*N, H*P) float64, nc = ceil(T/chunk): row c*N + n, column h*P + p (samples (chunk, n) x
 * features (h, p)); its second moment (uq_cov_accumulate_f64) is the statistic of uq_sort_ssm_head_channels.
 * x (T, H*P), B (T, G*N), dt (T, H) float32 as captured by uq_hy_layer_forward; A_log (H) float32.
 * UQ_ERR_ARG (NULL, sizes < 1, H % G != 0), UQ_ERR_NUMERIC (NaN/Inf input). */
uq_status uq_ssm_chunk_states(const float *x, const float *B, const float *dt, const float *A_log, int64_t T,
                              int64_t H, int64_t P, int64_t G, int64_t N, int64_t chunk, double *S);

/* ============================================================= batched decoding (runtime/ssm_batch.c) == */
/*
 * Continuous batching: one decode step runs one new token for each of n sequences, each with its own state
 * (uq_hy_state: KV cache, SSM and conv states, position), so sequences join (after a prefill with
 * uq_hy_forward on their own state) and leave between steps. The linears run once over the n
 * rows of the step (int4 R16 kernels with int8 or fp32 activations, fp32/fp16 GEMM); RoPE, KV cache writes,
 * attention, the conv1d and the selective-scan recurrence run per sequence. The result is bit-identical to
 * decoding each sequence alone (T = 1 forward): every kernel's operations per output element depend only on its
 * own token row (the runtimes' "Determinism" notes). A batch object holds the step's scratch for up to max_batch
 * rows and is tied to its model; states must be distinct and built for that model.
 */
/* One token per sequence (a Mamba layer takes the selective-scan recurrence, as uq_hy_forward with T = 1 does).
 * uq_hy_batch_init: UQ_ERR_ARG (NULL, max_batch < 1), UQ_ERR_RANGE (size overflow), UQ_ERR_NOMEM.
 * uq_hy_decode_batch: token ids[i] continues sequence states[i] (at its position, which then advances by one),
 * i < n; logits (n, vocab) caller-allocated. Everything is checked before any state changes: UQ_ERR_ARG (NULL, n
 * outside [1, max_batch], a state given twice), UQ_ERR_STATE (batch or state of another model), UQ_ERR_RANGE
 * (token id, a full state; naming the sequence).
 * uq_hy_batch_set_head: a tied int4 embedding is the lm_head in the row-major layout (the gather needs it), whose
 * multi-token kernels are slow at decode batch sizes: a step then runs the head row by row, or, given a
 * one-segment R16 copy of the same weight (uq_q4_repack_r16) here, over all rows at once when activations are
 * int8 (the same integer sums, so the same logits). The copy must outlive the batch. UQ_ERR_UNSUPPORTED (the
 * model's head is not row-major int4), UQ_ERR_SHAPE (not its R16 copy). */
typedef struct uq_hy_batch uq_hy_batch;
uq_status uq_hy_batch_init(const uq_hy_model *m, int64_t max_batch, uq_hy_batch **out);
void uq_hy_batch_free(uq_hy_batch *b);
size_t uq_hy_batch_bytes(const uq_hy_batch *b);
int64_t uq_hy_batch_max(const uq_hy_batch *b);
uq_status uq_hy_decode_batch(const uq_hy_model *m, uq_hy_batch *b, uq_hy_state *const *states, const int32_t *ids,
                             int64_t n, float *logits);
uq_status uq_hy_batch_set_head(uq_hy_batch *b, const uq_linear *head);

/* ============================================================ memory that follows the rate ======== */
/*
 * A model whose rate rises releases the rows/columns beyond its new keeps and one whose rate falls re-reads
 * only the missing parts from the artifact (uniql/elastic_memory.py orchestrates). Two layout helpers:
 *   uq_q4_unpack_r16: the exact inverse of uq_q4_repack_r16 (same codes and scales, row-major order), so an
 *   R16 weight can be cut to a smaller prefix or extended and repacked without the artifact.
 *     L: an int4 weight in the R16 layout; packed (rows, UQ_Q4_ROW_BYTES(cols)) uint8 (a trailing high nibble of
 *     odd cols is 0) and scales (rows, scale_cols) float16 bits, caller-allocated. UQ_ERR_ARG (NULL, not R16).
 *   uq_hy_state_transfer (above) moves a sequence to the new model.
 */
uq_status uq_q4_unpack_r16(const uq_linear *L, uint8_t *packed, uint16_t *scales);

#ifdef __cplusplus
}
#endif

#endif /* UNIQL_H */
