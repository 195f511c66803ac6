/*
 * uniql.h -- the one public header of libuniql, the C11 core of uniql.
 *
 * Conventions (see ../shared/STYLE.md):
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
 * G: (n, n) float64, row-major, caller-allocated, full symmetric matrix is written.
 * X: (T, n) with leading dimension ldx >= n. T = 0 is allowed and does nothing.
 * Returns UQ_ERR_ARG (NULL, n <= 0, ldx < n), UQ_ERR_NUMERIC (NaN/Inf in X). */
uq_status uq_cov_accumulate_f32(double *G, int64_t n, const float *X, int64_t T, int64_t ldx);
uq_status uq_cov_accumulate_f64(double *G, int64_t n, const double *X, int64_t T, int64_t ldx);
/* dst += src, both (n, n) float64. */
uq_status uq_cov_merge(double *dst, const double *src, int64_t n);

/* ======================================================================= linear algebra (linalg/) == */
/* All matrices float64 row-major. Inputs are not modified.
 * eigh: symmetric A (n,n) -> eigenvalues w (n) ascending, eigenvectors as columns of V (n,n). */
uq_status uq_linalg_eigh(const double *A, int64_t n, double *w, double *V);
/* Thin SVD: A (m,n) = U diag(S) Vt, k = min(m,n); U (m,k), S (k) descending, Vt (k,n). */
uq_status uq_linalg_svd(const double *A, int64_t m, int64_t n, double *U, double *S, double *Vt);
/* Cholesky A = L L^T of SPD A (n,n); L (n,n) lower triangular with zeros above the diagonal.
 * UQ_ERR_NUMERIC if A is not positive definite. */
uq_status uq_linalg_cholesky(const double *A, int64_t n, double *L);
/* d (n) = diag((A + shift*I)^{-1}) for SPD A + shift*I, via Cholesky (no explicit inverse). */
uq_status uq_linalg_spd_inv_diag(const double *A, int64_t n, double shift, double *d);
/* S = A^{1/2}, Sinv = A^{-1/2} of symmetric PSD A via eigh with eigenvalues floored at `floor` (> 0).
 * Either output may be NULL. */
uq_status uq_linalg_sqrtm(const double *A, int64_t n, double floor, double *S, double *Sinv);

/* ================================================================== int4 quantization (compress/) == */
/*
 * Packed int4 layout (format version 1), used by the artifact, the runtime and every kernel:
 *   weight W (rows, cols), group size g (g >= 1), ngroups = ceil(cols / g);
 *   code q[r][c] in 0..15, dequantized value  w = (q - 8) * scale[r][c / g];
 *   codes are packed row-major, two per byte, row stride = (cols + 1) / 2 bytes:
 *     byte (r, b) = q[r][2b] | (q[r][2b+1] << 4)   (low nibble = even column; a pad nibble is 8);
 *   scales: float32 (rows, ngroups), row-major.
 * Quantizer (both RTN and GPTQ): s = max|w over group| / 7.5 ; q = clamp(rint(w / s) + 8, 0, 15)
 * (round half to even); a group of zeros has s = 0 and codes 8.
 */
#define UQ_Q4_OFFSET 8
#define UQ_Q4_DEFAULT_GROUP 128
#define UQ_Q4_ROW_BYTES(cols) (((cols) + 1) / 2)

/* Round-to-nearest quantization of W (rows, cols; leading dimension ldw >= cols). */
uq_status uq_q4_quantize_rtn(const float *W, int64_t rows, int64_t cols, int64_t ldw, int64_t group,
                             uint8_t *packed, float *scales);
/* GPTQ (Frantar et al.) with Hessian H (cols, cols) float64 = mean X^T X of the layer input:
 * dead columns (H_ii == 0) get H_ii = 1 and W[:, i] = 0; damping damp * mean(diag H) (damp = 0.01);
 * columns in natural order, processed in blocks of `block` (0 = group size) with error feedback in float64;
 * each group's scale is computed from the error-updated weights when the group starts. */
uq_status uq_q4_quantize_gptq(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                              int64_t group, double damp, int64_t block, uint8_t *packed, float *scales);
/* codes (rows, cols) one per byte, values 0..15 <-> packed (rows, (cols+1)/2). */
uq_status uq_q4_pack(const uint8_t *codes, int64_t rows, int64_t cols, uint8_t *packed);
uq_status uq_q4_unpack(const uint8_t *packed, int64_t rows, int64_t cols, uint8_t *codes);
/* W (rows, cols) float32 = dequantized packed + scales. */
uq_status uq_q4_dequantize(const uint8_t *packed, const float *scales, int64_t rows, int64_t cols,
                           int64_t group, float *W);

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
 * no overlaps. UQ_ERR_IO (cannot open/map), UQ_ERR_FORMAT (anything malformed, naming what). */
uq_status uq_st_open(const char *path, uq_st_file **out);
void uq_st_close(uq_st_file *f);
int64_t uq_st_count(const uq_st_file *f);
/* i-th tensor in file order of data offsets. UQ_ERR_RANGE if i out of range. */
uq_status uq_st_get(const uq_st_file *f, int64_t i, uq_st_tensor *out);
/* Tensor by name; UQ_ERR_RANGE (message names the tensor) if absent. */
uq_status uq_st_find(const uq_st_file *f, const char *name, uq_st_tensor *out);
/* The "__metadata__" object re-serialized as compact JSON ("{}" when absent); owned by f. */
const char *uq_st_metadata(const uq_st_file *f);

/* Writes n tensors (names unique, data of nbytes each) and optional metadata (string key/value pairs,
 * nmeta of them) to path. The file is written to "<path>.tmp.<pid>" and renamed over path at the end,
 * so an interrupted write never leaves a truncated file under path. */
uq_status uq_st_write(const char *path, const uq_st_tensor *tensors, int64_t n, const char *const *meta_keys,
                      const char *const *meta_values, int64_t nmeta);

/* ============================================================ transformer runtime (runtime/) ====== */
/* (owned by the runtime implementation: csrc/runtime/, csrc/kernels/) */

/* ================================================ structured sorting and allocation (compress/) ====== */
/* (owned by the sorting implementation: csrc/compress/sort*.c) */

#ifdef __cplusplus
}
#endif

#endif /* UNIQL_H */
