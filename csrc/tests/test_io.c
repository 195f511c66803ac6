/* test_io.c -- safetensors writer/reader round trip, malformed files at the C level, and the JSON parser. */
#define _POSIX_C_SOURCE 200809L
#include "test.h"

#include <stdlib.h>
#include <unistd.h>

#include "../io/json.h"

/* Writes [u64 hlen][header][data] to path (hlen = strlen(header) unless hlen_override != UINT64_MAX). */
static void write_raw(const char *path, const char *header, uint64_t hlen_override, const void *data, size_t ndata) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    uint64_t h = hlen_override != UINT64_MAX ? hlen_override : (uint64_t)strlen(header);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(h >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(header, 1, strlen(header), fp);
    if (ndata) fwrite(data, 1, ndata, fp);
    fclose(fp);
}

/* Expects uq_st_open(path) to fail with `want` and a message containing `needle`. */
static void expect_bad(const char *path, uq_status want, const char *needle, const char *label) {
    uq_st_file *f = (uq_st_file *)1;
    CHECK_STATUS(uq_st_open(path, &f), want);
    CHECK(f == NULL, "%s: out not cleared", label);
    CHECK(strstr(uq_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", label, uq_last_error(), needle);
}

static void test_json(void) {
    uq_json_doc d;
    const char *txt = "{\"a\": [1, -2, 3.5e1, true, null], \"b\\u00e9\\n\": {\"c\": \"x\\ud83d\\ude00\"}}  ";
    CHECK_STATUS(uq_json_parse(txt, strlen(txt), 0, &d), UQ_OK);
    const uq_json_node *r = uq_json_root(&d);
    CHECK(r && r->type == UQ_JSON_OBJECT && r->count == 2, "root object of 2");
    const uq_json_node *a = uq_json_member(&d, r, "a");
    CHECK(a && a->type == UQ_JSON_ARRAY && a->count == 5, "array of 5");
    int64_t v = 0;
    const uq_json_node *e = uq_json_first(&d, a);
    CHECK(uq_json_as_int64(e, &v) && v == 1, "a[0] = 1");
    e = uq_json_next(&d, e);
    CHECK(uq_json_as_int64(e, &v) && v == -2, "a[1] = -2");
    e = uq_json_next(&d, e);
    double x = 0;
    CHECK(!uq_json_as_int64(e, &v) && uq_json_as_double(e, &x) && x == 35.0, "a[2] = 35.0 is not an int");
    const uq_json_node *b = uq_json_member(&d, r, "b\xc3\xa9\n");
    CHECK(b && b->type == UQ_JSON_OBJECT, "escaped key found");
    const uq_json_node *c = uq_json_member(&d, b, "c");
    CHECK(c && c->type == UQ_JSON_STRING && strcmp(c->str, "x\xf0\x9f\x98\x80") == 0, "surrogate pair decoded");
    uq_json_free(&d);
    uq_json_free(&d); /* idempotent */

    const char *bad[] = {"", "{", "{\"a\":1,}", "[1 2]", "01", "1.", "-", "\"\\x\"", "\"a\tb\"", "{\"a\":1}x",
                         "\"\\ud800\"", "\"\\u0000\"", "\"\xc0\xaf\"", "{\"a\":1,\"a\":2}", "NaN", "tru", "{1:2}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(uq_json_parse(bad[i], strlen(bad[i]), 0, &d), UQ_ERR_FORMAT);
        CHECK(d.nodes == NULL, "bad[%zu] left nodes", i);
    }
    /* int64 limits */
    const char *big = "[9223372036854775807, 9223372036854775808, -9223372036854775808]";
    CHECK_STATUS(uq_json_parse(big, strlen(big), 0, &d), UQ_OK);
    e = uq_json_first(&d, uq_json_root(&d));
    CHECK(uq_json_as_int64(e, &v) && v == INT64_MAX, "INT64_MAX");
    CHECK(!uq_json_as_int64(uq_json_next(&d, e), &v), "2^63 out of range");
    CHECK(uq_json_as_int64(uq_json_next(&d, uq_json_next(&d, e)), &v) && v == INT64_MIN, "INT64_MIN");
    uq_json_free(&d);
    /* depth and node limits */
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    CHECK_STATUS(uq_json_parse(deep, 200, 0, &d), UQ_ERR_FORMAT);
    CHECK(strstr(uq_last_error(), "nesting") != NULL, "depth message '%s'", uq_last_error());
    CHECK_STATUS(uq_json_parse(deep + 100 - 64, 128, 0, &d), UQ_OK);
    uq_json_free(&d);
    CHECK_STATUS(uq_json_parse("[1,2,3]", 7, 3, &d), UQ_ERR_FORMAT);
    CHECK_STATUS(uq_json_parse("[1,2,3]", 7, 4, &d), UQ_OK);
    uq_json_free(&d);

    uq_json_buf buf = {0};
    uq_json_buf_string(&buf, "a\"b\\c\n\x01", 7);
    CHECK(!buf.failed && strcmp(buf.p, "\"a\\\"b\\\\c\\n\\u0001\"") == 0, "escaped '%s'", buf.p ? buf.p : "");
    CHECK_STATUS(uq_json_parse(buf.p, buf.len, 0, &d), UQ_OK);
    CHECK(d.nnodes == 1 && strcmp(d.nodes[0].str, "a\"b\\c\n\x01") == 0, "escape round trip");
    uq_json_free(&d);
    uq_json_buf_free(&buf);
}

void test_io(void) {
    test_json();
    uq_st_close(NULL);
    CHECK(uq_dtype_size(UQ_DT_BF16) == 2 && uq_dtype_size((uq_dtype)99) == 0, "dtype sizes");
    CHECK(strcmp(uq_dtype_name(UQ_DT_I64), "I64") == 0 && uq_dtype_name((uq_dtype)-1) == NULL, "dtype names");
    uq_dtype dt;
    CHECK_STATUS(uq_dtype_parse("BF16", &dt), UQ_OK);
    CHECK(dt == UQ_DT_BF16, "parse BF16");
    CHECK_STATUS(uq_dtype_parse("BOOL", &dt), UQ_ERR_DTYPE);

    char dir[] = "/tmp/uq_test_io_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    char path[256], bad[256];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);

    /* ---- round trip ---- */
    float w[6] = {1, 2, 3, 4, 5, 6};
    int64_t ids[3] = {-1, 0, INT64_MAX};
    uint16_t h = 0x3c00;
    uq_st_tensor ts[4] = {
        {.name = "w \"quoted\"\n", .dtype = UQ_DT_F32, .ndim = 2, .shape = {2, 3}, .nbytes = sizeof w, .data = w},
        {.name = "empty", .dtype = UQ_DT_I8, .ndim = 2, .shape = {0, 5}, .nbytes = 0, .data = NULL},
        {.name = "ids", .dtype = UQ_DT_I64, .ndim = 1, .shape = {3}, .nbytes = sizeof ids, .data = ids},
        {.name = "scalar", .dtype = UQ_DT_BF16, .ndim = 0, .nbytes = 2, .data = &h},
    };
    const char *mk[2] = {"format", "k\\ey"}, *mv[2] = {"pt", "v\"al"};
    CHECK_STATUS(uq_st_write(path, ts, 4, mk, mv, 2), UQ_OK);
    char tmpname[300];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmpname, F_OK) != 0, "temp file left behind");
    uq_st_file *f = NULL;
    CHECK_STATUS(uq_st_open(path, &f), UQ_OK);
    if (f) {
        CHECK(uq_st_count(f) == 4, "count %lld", (long long)uq_st_count(f));
        uq_st_tensor t;
        for (int64_t i = 0; i < 4; i++) {
            CHECK_STATUS(uq_st_get(f, i, &t), UQ_OK);
            CHECK(strcmp(t.name, ts[i].name) == 0, "order %lld: %s", (long long)i, t.name);
            CHECK(t.dtype == ts[i].dtype && t.ndim == ts[i].ndim && t.nbytes == ts[i].nbytes, "meta %lld", (long long)i);
            for (int k = 0; k < t.ndim; k++) CHECK(t.shape[k] == ts[i].shape[k], "shape %lld/%d", (long long)i, k);
            if (t.nbytes) CHECK(memcmp(t.data, ts[i].data, t.nbytes) == 0, "data %lld", (long long)i);
        }
        CHECK_STATUS(uq_st_find(f, "ids", &t), UQ_OK);
        CHECK(t.dtype == UQ_DT_I64 && ((const int64_t *)t.data)[2] == INT64_MAX, "find ids");
        CHECK_STATUS(uq_st_find(f, "nope", &t), UQ_ERR_RANGE);
        CHECK(strstr(uq_last_error(), "'nope'") != NULL, "missing name in message: %s", uq_last_error());
        CHECK_STATUS(uq_st_get(f, 4, &t), UQ_ERR_RANGE);
        CHECK(strcmp(uq_st_metadata(f), "{\"format\":\"pt\",\"k\\\\ey\":\"v\\\"al\"}") == 0, "metadata %s",
              uq_st_metadata(f));
        const char *k, *v;
        CHECK(uq_st_metadata_count(f) == 2, "nmeta");
        CHECK_STATUS(uq_st_metadata_item(f, 1, &k, &v), UQ_OK);
        CHECK(strcmp(k, "k\\ey") == 0 && strcmp(v, "v\"al") == 0, "meta item");
        CHECK_STATUS(uq_st_metadata_item(f, 2, &k, &v), UQ_ERR_RANGE);
        uq_st_close(f);
    }
    /* the header is padded to a multiple of 8 */
    FILE *fp = fopen(path, "rb");
    unsigned char len8[8] = {0};
    if (fp) {
        CHECK(fread(len8, 1, 8, fp) == 8, "read length");
        fclose(fp);
    }
    CHECK(len8[0] % 8 == 0, "header length %u not a multiple of 8", len8[0]);

    /* zero-tensor file, no metadata */
    CHECK_STATUS(uq_st_write(path, NULL, 0, NULL, NULL, 0), UQ_OK);
    f = NULL;
    CHECK_STATUS(uq_st_open(path, &f), UQ_OK);
    CHECK(f && uq_st_count(f) == 0 && strcmp(uq_st_metadata(f), "{}") == 0, "empty file");
    uq_st_close(f);

    /* ---- writer input validation (no file created) ---- */
    uq_st_tensor dup[2] = {ts[0], ts[0]};
    CHECK_STATUS(uq_st_write(bad, dup, 2, NULL, NULL, 0), UQ_ERR_ARG);
    CHECK(strstr(uq_last_error(), "duplicate") != NULL, "dup msg %s", uq_last_error());
    uq_st_tensor wrong = ts[0];
    wrong.nbytes = 20;
    CHECK_STATUS(uq_st_write(bad, &wrong, 1, NULL, NULL, 0), UQ_ERR_SHAPE);
    wrong = ts[0];
    wrong.dtype = (uq_dtype)42;
    CHECK_STATUS(uq_st_write(bad, &wrong, 1, NULL, NULL, 0), UQ_ERR_DTYPE);
    wrong = ts[0];
    wrong.name = "";
    CHECK_STATUS(uq_st_write(bad, &wrong, 1, NULL, NULL, 0), UQ_ERR_ARG);
    CHECK(access(bad, F_OK) != 0, "no file after invalid input");
    char nodir[300];
    snprintf(nodir, sizeof nodir, "%s/missing/x.safetensors", dir);
    CHECK_STATUS(uq_st_write(nodir, ts, 1, NULL, NULL, 0), UQ_ERR_IO);
    CHECK(strstr(uq_last_error(), "No such file") != NULL, "errno text: %s", uq_last_error());

    /* ---- malformed files ---- */
    unsigned char data[64] = {0};
    expect_bad(nodir, UQ_ERR_IO, "cannot open", "missing file");
    expect_bad(dir, UQ_ERR_IO, "not a regular file", "directory");
    fp = fopen(bad, "wb");
    if (fp) { fwrite("\x10\0\0", 1, 3, fp); fclose(fp); }
    expect_bad(bad, UQ_ERR_FORMAT, "too short", "truncated length");
    write_raw(bad, "{}", (uint64_t)1 << 60, NULL, 0);
    expect_bad(bad, UQ_ERR_FORMAT, "out of range", "absurd header length");
    write_raw(bad, "{}", 1, NULL, 0);
    expect_bad(bad, UQ_ERR_FORMAT, "out of range", "header length 1");
    write_raw(bad, "{} ", 40, NULL, 0);
    expect_bad(bad, UQ_ERR_FORMAT, "exceeds", "header past end");
    write_raw(bad, "{\"a\":", UINT64_MAX, NULL, 0);
    expect_bad(bad, UQ_ERR_FORMAT, "header: invalid JSON", "non-JSON");
    write_raw(bad, "[1, 2]", UINT64_MAX, NULL, 0);
    expect_bad(bad, UQ_ERR_FORMAT, "not an object", "array header");
    write_raw(bad, "{\"w\":{\"dtype\":\"F99\",\"shape\":[1],\"data_offsets\":[0,4]}}", UINT64_MAX, data, 4);
    expect_bad(bad, UQ_ERR_FORMAT, "unknown dtype 'F99'", "bad dtype");
    write_raw(bad, "{\"w\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}", UINT64_MAX, data, 1);
    expect_bad(bad, UQ_ERR_UNSUPPORTED, "'BOOL'", "bool dtype");
    write_raw(bad, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,4]}}", UINT64_MAX, data, 4);
    expect_bad(bad, UQ_ERR_FORMAT, "shape entry 1 (-3)", "negative dim");
    write_raw(bad, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", UINT64_MAX,
              data, 4);
    expect_bad(bad, UQ_ERR_FORMAT, "overflows", "overflowing shape");
    write_raw(bad, "{\"w\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}", UINT64_MAX, data, 32);
    expect_bad(bad, UQ_ERR_FORMAT, "tensor 'w': data_offsets [0, 64] exceed data size 32", "offsets past data");
    write_raw(bad, "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", UINT64_MAX, data, 8);
    expect_bad(bad, UQ_ERR_FORMAT, "reversed", "reversed offsets");
    write_raw(bad, "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", UINT64_MAX, data, 16);
    expect_bad(bad, UQ_ERR_FORMAT, "needs 12", "size mismatch");
    write_raw(bad,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
              UINT64_MAX, data, 24);
    expect_bad(bad, UQ_ERR_FORMAT, "overlap", "overlap");
    write_raw(bad,
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
              "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
              UINT64_MAX, data, 8);
    expect_bad(bad, UQ_ERR_FORMAT, "duplicate key 'a'", "duplicate");
    write_raw(bad, "{\"__metadata__\":{\"k\":1}}", UINT64_MAX, NULL, 0);
    expect_bad(bad, UQ_ERR_FORMAT, "__metadata__ value of key 'k'", "non-string metadata");
    write_raw(bad, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":0}}", UINT64_MAX, data, 1);
    expect_bad(bad, UQ_ERR_FORMAT, "unknown key 'extra'", "unknown key");
    write_raw(bad, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", UINT64_MAX, data, 1);
    expect_bad(bad, UQ_ERR_FORMAT, "missing 'data_offsets'", "missing key");
    write_raw(bad, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", UINT64_MAX, data, 1);
    expect_bad(bad, UQ_ERR_UNSUPPORTED, "9 dimensions", "too many dims");

    /* empty tensors may share an offset with a neighbour's boundary; gaps are tolerated */
    write_raw(bad,
              "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[8,10]}}   ",
              UINT64_MAX, data, 12);
    f = NULL;
    CHECK_STATUS(uq_st_open(bad, &f), UQ_OK);
    if (f) {
        uq_st_tensor t;
        CHECK_STATUS(uq_st_get(f, 0, &t), UQ_OK);
        CHECK(strcmp(t.name, "a") == 0, "sorted by offset: %s", t.name);
        CHECK_STATUS(uq_st_get(f, 1, &t), UQ_OK);
        CHECK(strcmp(t.name, "e") == 0 && t.nbytes == 0, "empty second: %s", t.name);
        uq_st_close(f);
    }

    remove(path);
    remove(bad);
    rmdir(dir);
}
