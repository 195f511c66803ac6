/*
 * safetensors.c -- reader (mmap, fully validated) and writer (temp file + fsync + rename) of the
 * safetensors format: [u64 little-endian header length N][N bytes of JSON header][data area].
 *
 * Validation rules of uq_st_open (every failure names the file and the problem):
 *   - the file is a regular file of at least 8 bytes;                                       else UQ_ERR_FORMAT
 *   - 2 <= N <= 100 MiB (UQ_ST_MAX_HEADER) and 8 + N <= file size; data area = the rest;    else UQ_ERR_FORMAT
 *   - the header is strict JSON (json.h: UTF-8, no duplicate keys at any level, nesting <= 64) and an
 *     object; trailing spaces (the padding writers add) are fine;                           else UQ_ERR_FORMAT
 *   - "__metadata__", when present, is an object whose values are all strings;              else UQ_ERR_FORMAT
 *   - every other member is a tensor entry: an object with exactly the keys "dtype", "shape" and
 *     "data_offsets" (unknown keys are REJECTED, so a misspelt key never goes unnoticed);   else UQ_ERR_FORMAT
 *   - dtype is one of F32 F16 BF16 I8 U8 I32 I64 F64. Other dtypes that the safetensors format defines
 *     (BOOL, I16, U16, U32, U64, F8_*, F6_*, F4, C64, ...) give UQ_ERR_UNSUPPORTED; any other string gives
 *     UQ_ERR_FORMAT (both name the tensor and the dtype);
 *   - shape is an array of at most UQ_MAX_NDIM integers >= 0 (more dims: UQ_ERR_UNSUPPORTED); the product of
 *     its non-zero entries times the element size must fit int64 (a 0 entry makes an empty tensor, which is
 *     fine, but does not excuse the other entries: NumPy refuses such shapes too);           else UQ_ERR_FORMAT
 *   - data_offsets is [begin, end], integers with 0 <= begin <= end <= data size and
 *     end - begin == nbytes;                                                                 else UQ_ERR_FORMAT
 *   - no two tensors overlap (sorted by (begin, end), each begins at or after the previous end); gaps
 *     between tensors and bytes after the last one are tolerated (the Rust reader rejects them; our writer
 *     never produces them);                                                                  else UQ_ERR_FORMAT
 *   - names: any string (the JSON parser already rejects duplicates and \u0000).
 * The mapping is read-only (PROT_READ, MAP_PRIVATE). If another process truncates the file while it is
 * mapped, touching the lost pages raises SIGBUS: files must not be rewritten in place (our writer renames).
 *
 * uq_st_write writes: header {"__metadata__":{...}, name: {"dtype","shape","data_offsets"}, ...} with keys
 * in the given order, padded with spaces to a multiple of 8 bytes, then the tensors' bytes contiguously in
 * the given order; to "<path>.tmp.<pid>", fsync, rename over path (then a best-effort fsync of the
 * directory). Any I/O failure removes the temp file and returns UQ_ERR_IO with errno's text.
 */
#define _POSIX_C_SOURCE 200809L
#include "uniql.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"

#define UQ_ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024)

/* ----------------------------------------------------------------------------- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} uq_dtypes[UQ_DT_COUNT] = {
    [UQ_DT_F32] = {"F32", 4}, [UQ_DT_F16] = {"F16", 2}, [UQ_DT_BF16] = {"BF16", 2}, [UQ_DT_I8] = {"I8", 1},
    [UQ_DT_U8] = {"U8", 1},   [UQ_DT_I32] = {"I32", 4}, [UQ_DT_I64] = {"I64", 8},   [UQ_DT_F64] = {"F64", 8},
};

/* dtypes the safetensors format defines but uniql does not read */
static const char *const uq_st_unsupported[] = {"BOOL", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2",
                                                "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64", "E8M0"};

size_t uq_dtype_size(uq_dtype dt) { return (unsigned)dt < UQ_DT_COUNT ? uq_dtypes[dt].size : 0; }

const char *uq_dtype_name(uq_dtype dt) { return (unsigned)dt < UQ_DT_COUNT ? uq_dtypes[dt].name : NULL; }

uq_status uq_dtype_parse(const char *name, uq_dtype *out) {
    if (!name || !out) return uq_set_error(UQ_ERR_ARG, "uq_dtype_parse: NULL argument");
    for (int i = 0; i < UQ_DT_COUNT; i++)
        if (strcmp(name, uq_dtypes[i].name) == 0) {
            *out = (uq_dtype)i;
            return UQ_OK;
        }
    return uq_set_error(UQ_ERR_DTYPE, "unknown dtype '%.64s' (expected F32, F16, BF16, I8, U8, I32, I64 or F64)",
                        name);
}

/* ----------------------------------------------------------------------------- reader ---- */

struct uq_st_file {
    char *path;
    void *map;
    size_t map_size;
    const unsigned char *data; /* data area: map + 8 + N */
    size_t data_size;
    uq_json_doc doc;           /* owns the names and metadata strings */
    int64_t n;
    uq_st_tensor *tensors;     /* sorted by data offset */
    int64_t *by_name;          /* indices into tensors, sorted by name */
    int64_t nmeta;
    const char **meta_keys, **meta_values; /* file order */
    char *meta_json;
};

/* Sets the error "'<path>': <formatted>" and returns st. */
static uq_status st_fail(const char *path, uq_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static uq_status st_fail(const char *path, uq_status st, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return uq_set_error(st, "'%.200s': %s", path, msg);
}

/* "[2, 3]" into buf (truncated with "..." when long). */
static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t l = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && l < cap; i++) l += (size_t)snprintf(buf + l, cap - l, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (l < cap) snprintf(buf + l, cap - l, "]");
    return buf;
}

typedef struct {
    int64_t begin, end;
    int64_t idx; /* entry order in the header */
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* qsort has no context argument: the name index sorts pointers to tensors' names. */
typedef struct {
    const char *name;
    int64_t idx;
} name_ref;

static int name_ref_cmp(const void *a, const void *b) {
    return strcmp(((const name_ref *)a)->name, ((const name_ref *)b)->name);
}

/* Validates one tensor entry; fills t (data left NULL) and the span. */
static uq_status parse_entry(const char *path, const uq_json_doc *d, const uq_json_node *e, size_t data_size,
                             uq_st_tensor *t, span *sp) {
    const char *name = e->key;
    if (e->type != UQ_JSON_OBJECT)
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': entry is a JSON %s, not an object", name,
                       uq_json_type_name(e->type));
    const uq_json_node *jd = NULL, *js = NULL, *jo = NULL;
    for (const uq_json_node *c = uq_json_first(d, e); c; c = uq_json_next(d, c)) {
        if (strcmp(c->key, "dtype") == 0) jd = c;
        else if (strcmp(c->key, "shape") == 0) js = c;
        else if (strcmp(c->key, "data_offsets") == 0) jo = c;
        else
            return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': unknown key '%.64s' (expected dtype, shape, data_offsets)",
                           name, c->key);
    }
    if (!jd || !js || !jo)
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': missing '%s'", name,
                       !jd ? "dtype" : !js ? "shape" : "data_offsets");

    /* dtype */
    if (jd->type != UQ_JSON_STRING)
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': dtype is a JSON %s, not a string", name,
                       uq_json_type_name(jd->type));
    int dt = -1;
    for (int i = 0; i < UQ_DT_COUNT; i++)
        if (strcmp(jd->str, uq_dtypes[i].name) == 0) dt = i;
    if (dt < 0) {
        for (size_t i = 0; i < sizeof uq_st_unsupported / sizeof uq_st_unsupported[0]; i++)
            if (strcmp(jd->str, uq_st_unsupported[i]) == 0)
                return st_fail(path, UQ_ERR_UNSUPPORTED,
                               "tensor '%.200s': dtype '%s' is not supported (uniql reads F32, F16, BF16, I8, U8, I32, I64, F64)",
                               name, jd->str);
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': unknown dtype '%.64s'", name, jd->str);
    }
    t->name = name;
    t->dtype = (uq_dtype)dt;
    size_t esize = uq_dtypes[dt].size;

    /* shape */
    if (js->type != UQ_JSON_ARRAY)
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': shape is a JSON %s, not an array", name,
                       uq_json_type_name(js->type));
    if (js->count > UQ_MAX_NDIM)
        return st_fail(path, UQ_ERR_UNSUPPORTED, "tensor '%.200s': shape has %d dimensions (at most %d supported)",
                       name, (int)js->count, UQ_MAX_NDIM);
    t->ndim = js->count;
    int k = 0;
    uint64_t prod = esize; /* product of non-zero dims times element size, checked against INT64_MAX */
    int has_zero = 0, overflow = 0;
    for (const uq_json_node *c = uq_json_first(d, js); c; c = uq_json_next(d, c), k++) {
        int64_t v;
        if (c->type != UQ_JSON_NUMBER)
            return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': shape entry %d is a JSON %s, not an integer", name, k,
                           uq_json_type_name(c->type));
        if (!uq_json_as_int64(c, &v) || v < 0)
            return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': shape entry %d (%.*s) is not a non-negative 64-bit integer",
                           name, k, (int)(c->len < 40 ? c->len : 40), c->str);
        t->shape[k] = v;
        if (v == 0) {
            has_zero = 1;
            continue;
        }
        if (prod > (uint64_t)INT64_MAX / (uint64_t)v) overflow = 1;
        else prod *= (uint64_t)v;
    }
    if (overflow) {
        char sb[256];
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': shape %s overflows int64 (too many %s bytes)", name,
                       shape_str(t->shape, t->ndim, sb, sizeof sb), uq_dtypes[dt].name);
    }
    t->nbytes = has_zero ? 0 : (size_t)prod;

    /* data_offsets */
    if (jo->type != UQ_JSON_ARRAY || jo->count != 2)
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': data_offsets must be an array of 2 integers", name);
    int64_t off[2];
    k = 0;
    for (const uq_json_node *c = uq_json_first(d, jo); c; c = uq_json_next(d, c), k++)
        if (!uq_json_as_int64(c, &off[k]) || off[k] < 0)
            return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': data_offsets entry %d is not a non-negative 64-bit integer",
                           name, k);
    if (off[0] > off[1])
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': data_offsets [%lld, %lld] are reversed (begin > end)", name,
                       (long long)off[0], (long long)off[1]);
    if ((uint64_t)off[1] > (uint64_t)data_size)
        return st_fail(path, UQ_ERR_FORMAT, "tensor '%.200s': data_offsets [%lld, %lld] exceed data size %zu", name,
                       (long long)off[0], (long long)off[1], data_size);
    if ((uint64_t)(off[1] - off[0]) != (uint64_t)t->nbytes) {
        char sb[256];
        return st_fail(path, UQ_ERR_FORMAT,
                       "tensor '%.200s': data_offsets [%lld, %lld] span %lld bytes but %s shape %s needs %zu", name,
                       (long long)off[0], (long long)off[1], (long long)(off[1] - off[0]), uq_dtypes[dt].name,
                       shape_str(t->shape, t->ndim, sb, sizeof sb), t->nbytes);
    }
    sp->begin = off[0];
    sp->end = off[1];
    return UQ_OK;
}

static uq_status parse_metadata(uq_st_file *f, const uq_json_node *m) {
    const uq_json_doc *d = &f->doc;
    if (m->type != UQ_JSON_OBJECT)
        return st_fail(f->path, UQ_ERR_FORMAT, "__metadata__ is a JSON %s, not an object of strings",
                       uq_json_type_name(m->type));
    uq_status st;
    void *k = NULL, *v = NULL;
    if ((st = uq_alloc((size_t)m->count * sizeof(char *), &k)) != UQ_OK) return st;
    if ((st = uq_alloc((size_t)m->count * sizeof(char *), &v)) != UQ_OK) {
        uq_free(k);
        return st;
    }
    f->meta_keys = k;
    f->meta_values = v;
    uq_json_buf b = {0};
    uq_json_buf_puts(&b, "{");
    for (const uq_json_node *c = uq_json_first(d, m); c; c = uq_json_next(d, c)) {
        if (c->type != UQ_JSON_STRING) {
            uq_json_buf_free(&b);
            return st_fail(f->path, UQ_ERR_FORMAT, "__metadata__ value of key '%.200s' is a JSON %s, not a string",
                           c->key, uq_json_type_name(c->type));
        }
        if (f->nmeta) uq_json_buf_puts(&b, ",");
        uq_json_buf_string(&b, c->key, c->key_len);
        uq_json_buf_puts(&b, ":");
        uq_json_buf_string(&b, c->str, c->len);
        f->meta_keys[f->nmeta] = c->key;
        f->meta_values[f->nmeta] = c->str;
        f->nmeta++;
    }
    uq_json_buf_puts(&b, "}");
    if (b.failed) {
        uq_json_buf_free(&b);
        return uq_set_error(UQ_ERR_NOMEM, "out of memory re-serializing the metadata of '%.200s'", f->path);
    }
    f->meta_json = b.p;
    return UQ_OK;
}

static uq_status st_validate(uq_st_file *f, const unsigned char *base, size_t size) {
    const char *path = f->path;
    if (size < 8)
        return st_fail(path, UQ_ERR_FORMAT, "file is %zu bytes, too short for the 8-byte header length (truncated?)", size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | base[i];
    if (hlen < 2 || hlen > UQ_ST_MAX_HEADER)
        return st_fail(path, UQ_ERR_FORMAT, "header length %llu is out of range [2, %llu]", (unsigned long long)hlen,
                       (unsigned long long)UQ_ST_MAX_HEADER);
    if (hlen > size - 8)
        return st_fail(path, UQ_ERR_FORMAT, "header length %llu exceeds the %zu bytes after the length field (truncated?)",
                       (unsigned long long)hlen, size - 8);
    f->data = base + 8 + hlen;
    f->data_size = size - 8 - (size_t)hlen;

    uq_status st = uq_json_parse((const char *)base + 8, (size_t)hlen, 0, &f->doc);
    if (st != UQ_OK) {
        if (st != UQ_ERR_FORMAT) return st;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", uq_last_error());
        return st_fail(path, UQ_ERR_FORMAT, "header: %s", msg);
    }
    const uq_json_doc *d = &f->doc;
    const uq_json_node *root = uq_json_root(d);
    if (root->type != UQ_JSON_OBJECT)
        return st_fail(path, UQ_ERR_FORMAT, "header is a JSON %s, not an object", uq_json_type_name(root->type));

    const uq_json_node *meta = uq_json_member(d, root, "__metadata__");
    int64_t n = root->count - (meta ? 1 : 0);
    void *tp = NULL, *sp = NULL, *bp = NULL, *np_ = NULL;
    if ((st = uq_calloc((size_t)n * sizeof(uq_st_tensor), &tp)) != UQ_OK) return st;
    f->tensors = tp;
    if ((st = uq_alloc((size_t)n * sizeof(int64_t), &bp)) != UQ_OK) return st;
    f->by_name = bp;
    if ((st = uq_alloc((size_t)n * sizeof(span), &sp)) != UQ_OK) return st;
    if ((st = uq_alloc((size_t)n * sizeof(uq_st_tensor), &np_)) != UQ_OK) goto done;
    span *spans = sp;
    uq_st_tensor *tmp = np_;

    int64_t i = 0;
    for (const uq_json_node *e = uq_json_first(d, root); e; e = uq_json_next(d, e)) {
        if (e == meta) continue;
        if ((st = parse_entry(path, d, e, f->data_size, &tmp[i], &spans[i])) != UQ_OK) goto done;
        spans[i].idx = i;
        i++;
    }
    qsort(spans, (size_t)n, sizeof *spans, span_cmp);
    for (i = 0; i < n; i++) {
        if (i > 0 && spans[i].begin < spans[i - 1].end) {
            const span *a = &spans[i - 1], *b = &spans[i];
            st = st_fail(path, UQ_ERR_FORMAT, "tensors '%.200s' [%lld, %lld] and '%.200s' [%lld, %lld] overlap",
                         tmp[a->idx].name, (long long)a->begin, (long long)a->end, tmp[b->idx].name,
                         (long long)b->begin, (long long)b->end);
            goto done;
        }
        f->tensors[i] = tmp[spans[i].idx];
        f->tensors[i].data = f->data + spans[i].begin;
    }
    f->n = n;
    /* name index (names are unique: the JSON parser rejects duplicate keys) */
    name_ref *refs = (name_ref *)spans; /* reuse: sizeof(name_ref) <= sizeof(span) */
    for (i = 0; i < n; i++) {
        refs[i].name = f->tensors[i].name;
        refs[i].idx = i;
    }
    qsort(refs, (size_t)n, sizeof *refs, name_ref_cmp);
    for (i = 0; i < n; i++) f->by_name[i] = refs[i].idx;

    if (meta) {
        st = parse_metadata(f, meta);
    } else {
        char *s = malloc(3);
        if (!s) st = uq_set_error(UQ_ERR_NOMEM, "out of memory");
        else {
            memcpy(s, "{}", 3);
            f->meta_json = s;
        }
    }
done:
    uq_free(sp);
    uq_free(np_);
    return st;
}

uq_status uq_st_open(const char *path, uq_st_file **out) {
    if (!out) return uq_set_error(UQ_ERR_ARG, "uq_st_open: out is NULL");
    *out = NULL;
    if (!path) return uq_set_error(UQ_ERR_ARG, "uq_st_open: path is NULL");
    uq_st_file *f = calloc(1, sizeof *f);
    if (!f) return uq_set_error(UQ_ERR_NOMEM, "out of memory opening '%.200s'", path);
    size_t plen = strlen(path);
    f->path = malloc(plen + 1);
    if (!f->path) {
        free(f);
        return uq_set_error(UQ_ERR_NOMEM, "out of memory opening '%.200s'", path);
    }
    memcpy(f->path, path, plen + 1);

    uq_status st = UQ_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = st_fail(path, UQ_ERR_IO, "cannot open: %s", strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = st_fail(path, UQ_ERR_IO, "cannot stat: %s", strerror(errno));
        close(fd);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = st_fail(path, UQ_ERR_IO, "not a regular file");
        close(fd);
        goto fail;
    }
    size_t size = (size_t)sb.st_size;
    if (size >= 8) {
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = st_fail(path, UQ_ERR_IO, "cannot map %zu bytes: %s", size, strerror(errno));
            close(fd);
            goto fail;
        }
        f->map = m;
        f->map_size = size;
    }
    close(fd); /* the mapping stays valid */
    static const unsigned char none[1] = {0};
    st = st_validate(f, f->map ? (const unsigned char *)f->map : none, size);
    if (st != UQ_OK) goto fail;
    *out = f;
    return UQ_OK;
fail:
    uq_st_close(f);
    return st;
}

void uq_st_close(uq_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_size);
    uq_json_free(&f->doc);
    uq_free(f->tensors);
    uq_free(f->by_name);
    uq_free((void *)f->meta_keys);
    uq_free((void *)f->meta_values);
    free(f->meta_json);
    free(f->path);
    free(f);
}

int64_t uq_st_count(const uq_st_file *f) { return f ? f->n : 0; }

uq_status uq_st_get(const uq_st_file *f, int64_t i, uq_st_tensor *out) {
    if (!f || !out) return uq_set_error(UQ_ERR_ARG, "uq_st_get: NULL argument");
    if (i < 0 || i >= f->n)
        return uq_set_error(UQ_ERR_RANGE, "'%.200s': tensor index %lld out of range [0, %lld)", f->path, (long long)i,
                            (long long)f->n);
    *out = f->tensors[i];
    return UQ_OK;
}

uq_status uq_st_find(const uq_st_file *f, const char *name, uq_st_tensor *out) {
    if (!f || !name || !out) return uq_set_error(UQ_ERR_ARG, "uq_st_find: NULL argument");
    int64_t lo = 0, hi = f->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[f->by_name[mid]].name, name);
        if (c == 0) {
            *out = f->tensors[f->by_name[mid]];
            return UQ_OK;
        }
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return uq_set_error(UQ_ERR_RANGE, "'%.200s': no tensor named '%.200s'", f->path, name);
}

const char *uq_st_metadata(const uq_st_file *f) { return f && f->meta_json ? f->meta_json : "{}"; }

int64_t uq_st_metadata_count(const uq_st_file *f) { return f ? f->nmeta : 0; }

uq_status uq_st_metadata_item(const uq_st_file *f, int64_t i, const char **key, const char **value) {
    if (!f || !key || !value) return uq_set_error(UQ_ERR_ARG, "uq_st_metadata_item: NULL argument");
    if (i < 0 || i >= f->nmeta)
        return uq_set_error(UQ_ERR_RANGE, "'%.200s': metadata index %lld out of range [0, %lld)", f->path, (long long)i,
                            (long long)f->nmeta);
    *key = f->meta_keys[i];
    *value = f->meta_values[i];
    return UQ_OK;
}

/* ----------------------------------------------------------------------------- writer ---- */

static int cstr_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Rejects NULL/duplicate strings in names[0..n); `what` is "tensor name" or "metadata key". */
static uq_status check_unique(const char *const *names, int64_t n, const char *what) {
    if (n < 2) return UQ_OK;
    void *p;
    uq_status st = uq_alloc((size_t)n * sizeof(char *), &p);
    if (st != UQ_OK) return st;
    const char **s = p;
    memcpy(s, names, (size_t)n * sizeof(char *));
    qsort(s, (size_t)n, sizeof *s, cstr_cmp);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(s[i - 1], s[i]) == 0) {
            st = uq_set_error(UQ_ERR_ARG, "duplicate %s '%.200s'", what, s[i]);
            break;
        }
    uq_free(p);
    return st;
}

static uq_status write_all(int fd, const void *buf, size_t n, const char *tmp) {
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return uq_set_error(UQ_ERR_IO, "cannot write '%.200s': %s", tmp, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return UQ_OK;
}

static void fsync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else return;
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd); /* best effort: some file systems refuse fsync on directories */
    close(fd);
}

uq_status uq_st_write(const char *path, const uq_st_tensor *tensors, int64_t n, const char *const *meta_keys,
                      const char *const *meta_values, int64_t nmeta) {
    if (!path || !path[0]) return uq_set_error(UQ_ERR_ARG, "uq_st_write: path is NULL or empty");
    if (n < 0 || (n > 0 && !tensors)) return uq_set_error(UQ_ERR_ARG, "uq_st_write: bad tensor list (n = %lld)", (long long)n);
    if (nmeta < 0 || (nmeta > 0 && (!meta_keys || !meta_values)))
        return uq_set_error(UQ_ERR_ARG, "uq_st_write: bad metadata list (nmeta = %lld)", (long long)nmeta);

    /* validate the inputs before touching the file system */
    uint64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        const uq_st_tensor *t = &tensors[i];
        if (!t->name || !t->name[0]) return uq_set_error(UQ_ERR_ARG, "tensor %lld: name is NULL or empty", (long long)i);
        const char *nm = t->name;
        if (!uq_json_utf8_valid(nm, strlen(nm))) return uq_set_error(UQ_ERR_ARG, "tensor %lld: name is not valid UTF-8", (long long)i);
        if (strcmp(nm, "__metadata__") == 0) return uq_set_error(UQ_ERR_ARG, "tensor name '__metadata__' is reserved");
        if ((unsigned)t->dtype >= UQ_DT_COUNT)
            return uq_set_error(UQ_ERR_DTYPE, "tensor '%.200s': invalid dtype %d", nm, (int)t->dtype);
        if (t->ndim < 0 || t->ndim > UQ_MAX_NDIM)
            return uq_set_error(UQ_ERR_SHAPE, "tensor '%.200s': ndim %d out of range [0, %d]", nm, (int)t->ndim, UQ_MAX_NDIM);
        uint64_t prod = uq_dtypes[t->dtype].size;
        int zero = 0;
        for (int k = 0; k < t->ndim; k++) {
            int64_t v = t->shape[k];
            if (v < 0) return uq_set_error(UQ_ERR_SHAPE, "tensor '%.200s': shape entry %d is negative (%lld)", nm, k, (long long)v);
            if (v == 0) { zero = 1; continue; }
            if (prod > (uint64_t)INT64_MAX / (uint64_t)v)
                return uq_set_error(UQ_ERR_SHAPE, "tensor '%.200s': shape overflows int64", nm);
            prod *= (uint64_t)v;
        }
        if (zero) prod = 0;
        if (prod != (uint64_t)t->nbytes) {
            char sb[256];
            return uq_set_error(UQ_ERR_SHAPE, "tensor '%.200s': nbytes %zu does not match %s shape %s (%llu bytes)", nm,
                                t->nbytes, uq_dtypes[t->dtype].name, shape_str(t->shape, t->ndim, sb, sizeof sb),
                                (unsigned long long)prod);
        }
        if (prod > 0 && !t->data) return uq_set_error(UQ_ERR_ARG, "tensor '%.200s': data is NULL", nm);
        if (prod > (uint64_t)INT64_MAX - total) return uq_set_error(UQ_ERR_SHAPE, "total data size overflows int64");
        total += prod;
    }
    for (int64_t i = 0; i < nmeta; i++) {
        if (!meta_keys[i] || !meta_values[i])
            return uq_set_error(UQ_ERR_ARG, "metadata entry %lld: key or value is NULL", (long long)i);
        if (!uq_json_utf8_valid(meta_keys[i], strlen(meta_keys[i])) ||
            !uq_json_utf8_valid(meta_values[i], strlen(meta_values[i])))
            return uq_set_error(UQ_ERR_ARG, "metadata entry %lld: key or value is not valid UTF-8", (long long)i);
    }
    uq_status st = check_unique(meta_keys, nmeta, "metadata key");
    if (st != UQ_OK) return st;
    if (n > 1) {
        void *p;
        if ((st = uq_alloc((size_t)n * sizeof(char *), &p)) != UQ_OK) return st;
        const char **names = p;
        for (int64_t i = 0; i < n; i++) names[i] = tensors[i].name;
        st = check_unique(names, n, "tensor name");
        uq_free(p);
        if (st != UQ_OK) return st;
    }

    /* header: 8-byte length placeholder, JSON, space padding to a multiple of 8 */
    uq_json_buf b = {0};
    uq_json_buf_put(&b, "\0\0\0\0\0\0\0\0", 8);
    uq_json_buf_puts(&b, "{");
    if (nmeta > 0) {
        uq_json_buf_puts(&b, "\"__metadata__\":{");
        for (int64_t i = 0; i < nmeta; i++) {
            if (i) uq_json_buf_puts(&b, ",");
            uq_json_buf_string(&b, meta_keys[i], strlen(meta_keys[i]));
            uq_json_buf_puts(&b, ":");
            uq_json_buf_string(&b, meta_values[i], strlen(meta_values[i]));
        }
        uq_json_buf_puts(&b, "}");
    }
    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const uq_st_tensor *t = &tensors[i];
        if (i || nmeta > 0) uq_json_buf_puts(&b, ",");
        uq_json_buf_string(&b, t->name, strlen(t->name));
        uq_json_buf_puts(&b, ":{\"dtype\":\"");
        uq_json_buf_puts(&b, uq_dtypes[t->dtype].name);
        uq_json_buf_puts(&b, "\",\"shape\":[");
        for (int k = 0; k < t->ndim; k++) {
            if (k) uq_json_buf_puts(&b, ",");
            uq_json_buf_i64(&b, t->shape[k]);
        }
        uq_json_buf_puts(&b, "],\"data_offsets\":[");
        uq_json_buf_i64(&b, off);
        uq_json_buf_puts(&b, ",");
        off += (int64_t)t->nbytes;
        uq_json_buf_i64(&b, off);
        uq_json_buf_puts(&b, "]}");
    }
    uq_json_buf_puts(&b, "}");
    while (!b.failed && (b.len - 8) % 8 != 0) uq_json_buf_puts(&b, " ");
    if (b.failed) {
        uq_json_buf_free(&b);
        return uq_set_error(UQ_ERR_NOMEM, "out of memory building the header of '%.200s'", path);
    }
    uint64_t hlen = (uint64_t)(b.len - 8);
    if (hlen > UQ_ST_MAX_HEADER) {
        uq_json_buf_free(&b);
        return uq_set_error(UQ_ERR_ARG, "header of '%.200s' would be %llu bytes (more than %llu)", path,
                            (unsigned long long)hlen, (unsigned long long)UQ_ST_MAX_HEADER);
    }
    for (int i = 0; i < 8; i++) b.p[i] = (char)((hlen >> (8 * i)) & 0xff);

    /* temp file, fsync, rename */
    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (!tmp) {
        uq_json_buf_free(&b);
        return uq_set_error(UQ_ERR_NOMEM, "out of memory");
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = uq_set_error(UQ_ERR_IO, "cannot create '%.200s': %s", tmp, strerror(errno));
        free(tmp);
        uq_json_buf_free(&b);
        return st;
    }
    st = write_all(fd, b.p, b.len, tmp);
    uq_json_buf_free(&b);
    for (int64_t i = 0; st == UQ_OK && i < n; i++)
        if (tensors[i].nbytes) st = write_all(fd, tensors[i].data, tensors[i].nbytes, tmp);
    if (st == UQ_OK && fsync(fd) != 0) st = uq_set_error(UQ_ERR_IO, "cannot fsync '%.200s': %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == UQ_OK) st = uq_set_error(UQ_ERR_IO, "cannot close '%.200s': %s", tmp, strerror(errno));
    if (st == UQ_OK && rename(tmp, path) != 0)
        st = uq_set_error(UQ_ERR_IO, "cannot rename '%.200s' to '%.200s': %s", tmp, path, strerror(errno));
    if (st != UQ_OK) unlink(tmp);
    else fsync_parent_dir(path);
    free(tmp);
    return st;
}
