/*
 * fuzz_safetensors.c -- libFuzzer harness of the safetensors reader (csrc/io/safetensors.c) and writer.
 *
 * The input is a whole safetensors file. The reader validates it in place, from libFuzzer's exact-size heap
 * buffer (not an mmap), so AddressSanitizer sees every read past the end of the file by even one byte: the harness
 * #includes safetensors.c to reach its static validator st_validate(), the same code uq_st_open runs on the
 * mapping. Properties checked on every input (a violation traps, i.e. is reported as a crash):
 *   - validation returns UQ_OK or one of FORMAT / UNSUPPORTED / NOMEM, with a non-empty message;
 *   - on success every tensor lies inside the data area, tensors are sorted by offset and do not overlap,
 *     nbytes == product(shape) * dtype size, every tensor byte is readable (ASan), uq_st_find finds every name
 *     and uq_st_get/uq_st_metadata_item are bounded;
 *   - on success the writer round-trips the file: uq_st_write of the tensors and metadata, then uq_st_open (the
 *     public, mmap path) gives the same names, dtypes, shapes, bytes and metadata. (Empty tensor names are legal
 *     for the reader but refused by the writer: such inputs skip the round trip.)
 */
#include "../io/safetensors.c"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_CHECK(c) do { if (!(c)) { fprintf(stderr, "property failed: %s (line %d)\n", #c, __LINE__); __builtin_trap(); } } while (0)

static char g_out[256];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("UQ_FUZZ_TMP");
    if (!dir) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g_out, sizeof g_out, "%s/uq_fuzz_st_%ld.safetensors", dir, (long)getpid());
    return 0;
}

static void round_trip(const uq_st_file *f) {
    int64_t n = f->n;
    for (int64_t i = 0; i < n; i++)
        if (f->tensors[i].name[0] == '\0' || !uq_json_utf8_valid(f->tensors[i].name, strlen(f->tensors[i].name)))
            return; /* the writer refuses empty names; the reader's names are valid UTF-8 by construction */
    uq_status st = uq_st_write(g_out, f->tensors, n, f->meta_keys, f->meta_values, f->nmeta);
    if (st == UQ_ERR_IO) return; /* e.g. the temp directory is full: not a property of the input */
    if (st != UQ_OK) fprintf(stderr, "writer refused a file the reader accepted: %s\n", uq_last_error());
    FUZZ_CHECK(st == UQ_OK);
    uq_st_file *g = NULL;
    st = uq_st_open(g_out, &g);
    if (st != UQ_OK) fprintf(stderr, "reader refused the writer's file: %s\n", uq_last_error());
    FUZZ_CHECK(st == UQ_OK && g);
    FUZZ_CHECK(uq_st_count(g) == n);
    for (int64_t i = 0; i < n; i++) {
        const uq_st_tensor *a = &f->tensors[i];
        uq_st_tensor b;
        FUZZ_CHECK(uq_st_find(g, a->name, &b) == UQ_OK);
        FUZZ_CHECK(b.dtype == a->dtype && b.ndim == a->ndim && b.nbytes == a->nbytes);
        for (int k = 0; k < a->ndim; k++) FUZZ_CHECK(b.shape[k] == a->shape[k]);
        FUZZ_CHECK(a->nbytes == 0 || memcmp(a->data, b.data, a->nbytes) == 0);
    }
    FUZZ_CHECK(uq_st_metadata_count(g) == f->nmeta);
    for (int64_t i = 0; i < f->nmeta; i++) {
        const char *k, *v;
        FUZZ_CHECK(uq_st_metadata_item(g, i, &k, &v) == UQ_OK);
        FUZZ_CHECK(strcmp(k, f->meta_keys[i]) == 0 && strcmp(v, f->meta_values[i]) == 0);
    }
    FUZZ_CHECK(strcmp(uq_st_metadata(g), uq_st_metadata(f)) == 0);
    uq_st_close(g);
    unlink(g_out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uq_st_file *f = calloc(1, sizeof *f);
    if (!f) return 0;
    f->path = strdup("fuzz.safetensors");
    if (!f->path) {
        free(f);
        return 0;
    }
    uq_clear_error();
    static const unsigned char none[1] = {0};
    uq_status st = st_validate(f, size ? data : none, size);
    if (st != UQ_OK) {
        FUZZ_CHECK(st == UQ_ERR_FORMAT || st == UQ_ERR_UNSUPPORTED || st == UQ_ERR_NOMEM);
        FUZZ_CHECK(uq_last_error()[0] != '\0');
        uq_st_close(f);
        return 0;
    }
    /* structural invariants */
    FUZZ_CHECK(size >= 8);
    const unsigned char *lo = f->data, *hi = f->data + f->data_size;
    FUZZ_CHECK(lo >= data && hi == data + size);
    int64_t prev_end = 0;
    volatile unsigned sink = 0;
    for (int64_t i = 0; i < f->n; i++) {
        uq_st_tensor t;
        FUZZ_CHECK(uq_st_get(f, i, &t) == UQ_OK);
        const unsigned char *b = t.data;
        FUZZ_CHECK(b >= lo && b + t.nbytes <= hi);
        FUZZ_CHECK((int64_t)(b - lo) >= prev_end);
        prev_end = (int64_t)(b - lo) + (int64_t)t.nbytes;
        FUZZ_CHECK(t.ndim >= 0 && t.ndim <= UQ_MAX_NDIM);
        uint64_t prod = uq_dtype_size(t.dtype);
        FUZZ_CHECK(prod > 0);
        for (int k = 0; k < t.ndim; k++) {
            FUZZ_CHECK(t.shape[k] >= 0);
            prod = t.shape[k] == 0 ? 0 : prod * (uint64_t)t.shape[k];
        }
        FUZZ_CHECK(prod == (uint64_t)t.nbytes);
        for (size_t j = 0; j < t.nbytes; j++) sink += b[j]; /* ASan: every byte is inside the input */
        uq_st_tensor u;
        FUZZ_CHECK(uq_st_find(f, t.name, &u) == UQ_OK && u.data == t.data);
    }
    uq_st_tensor dummy;
    FUZZ_CHECK(uq_st_get(f, f->n, &dummy) == UQ_ERR_RANGE && uq_st_get(f, -1, &dummy) == UQ_ERR_RANGE);
    for (int64_t i = 0; i < uq_st_metadata_count(f); i++) {
        const char *k, *v;
        FUZZ_CHECK(uq_st_metadata_item(f, i, &k, &v) == UQ_OK);
        sink += (unsigned)strlen(k) + (unsigned)strlen(v);
    }
    const char *k, *v;
    FUZZ_CHECK(uq_st_metadata_item(f, uq_st_metadata_count(f), &k, &v) == UQ_ERR_RANGE);
    uq_json_doc md;
    FUZZ_CHECK(uq_json_parse(uq_st_metadata(f), strlen(uq_st_metadata(f)), 0, &md) == UQ_OK);
    uq_json_free(&md);
    (void)sink;
    round_trip(f);
    uq_st_close(f);
    return 0;
}
