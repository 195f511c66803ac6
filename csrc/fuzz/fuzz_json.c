/*
 * fuzz_json.c -- libFuzzer harness of the strict bounded JSON parser (csrc/io/json.h).
 *
 * The input is JSON text (not NUL-terminated: libFuzzer's exact-size buffer, so ASan sees any read past the end).
 * Properties checked on every input (a violation traps, i.e. is reported as a crash):
 *   - uq_json_parse returns UQ_OK, or UQ_ERR_FORMAT / UQ_ERR_NOMEM with a non-empty message and an empty doc;
 *   - on success the tree is consistent: child/next indices in range and acyclic (each node visited once),
 *     count == number of children, object members carry keys and array elements do not, strings are
 *     NUL-terminated at len, contain no NUL and are valid UTF-8, no object has two equal keys;
 *     uq_json_as_int64 / uq_json_as_double agree on integers below 2^53;
 *   - the node limit is exact: max_nodes = nnodes parses, max_nodes = nnodes - 1 fails with UQ_ERR_FORMAT;
 *   - re-serializing the tree with the uq_json_buf writers and parsing that gives the same tree
 *     (types, counts, keys, string bytes, number literals).
 */
#include "../io/json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(c) do { if (!(c)) { fprintf(stderr, "property failed: %s (line %d)\n", #c, __LINE__); __builtin_trap(); } } while (0)

static void check_tree(const uq_json_doc *d, int32_t idx, int depth, unsigned char *seen) {
    FUZZ_CHECK(idx >= 0 && idx < d->nnodes);
    FUZZ_CHECK(!seen[idx]);
    seen[idx] = 1;
    FUZZ_CHECK(depth <= UQ_JSON_MAX_DEPTH);
    const uq_json_node *n = &d->nodes[idx];
    switch (n->type) {
    case UQ_JSON_STRING:
        FUZZ_CHECK(n->str && n->str[n->len] == '\0' && strlen(n->str) == n->len);
        FUZZ_CHECK(uq_json_utf8_valid(n->str, n->len));
        break;
    case UQ_JSON_NUMBER: {
        FUZZ_CHECK(n->str && n->len > 0);
        int64_t iv;
        double dv;
        if (uq_json_as_int64(n, &iv) && iv > -(INT64_C(1) << 53) && iv < (INT64_C(1) << 53))
            FUZZ_CHECK(uq_json_as_double(n, &dv) && dv == (double)iv);
        break;
    }
    case UQ_JSON_ARRAY:
    case UQ_JSON_OBJECT: {
        int32_t count = 0;
        for (const uq_json_node *c = uq_json_first(d, n); c; c = uq_json_next(d, c)) {
            int32_t ci = (int32_t)(c - d->nodes);
            if (n->type == UQ_JSON_OBJECT) {
                FUZZ_CHECK(c->key && c->key[c->key_len] == '\0' && strlen(c->key) == c->key_len);
                FUZZ_CHECK(uq_json_utf8_valid(c->key, c->key_len));
                FUZZ_CHECK(uq_json_member(d, n, c->key) != NULL);
                for (const uq_json_node *e = uq_json_next(d, c); e; e = uq_json_next(d, e))
                    FUZZ_CHECK(e->key_len != c->key_len || memcmp(e->key, c->key, c->key_len) != 0);
            } else {
                FUZZ_CHECK(c->key == NULL);
            }
            check_tree(d, ci, depth + 1, seen);
            count++;
        }
        FUZZ_CHECK(count == n->count);
        break;
    }
    default:
        FUZZ_CHECK(n->type == UQ_JSON_NULL || n->type == UQ_JSON_TRUE || n->type == UQ_JSON_FALSE);
    }
}

static void write_value(const uq_json_doc *d, const uq_json_node *n, uq_json_buf *b) {
    switch (n->type) {
    case UQ_JSON_NULL: uq_json_buf_puts(b, "null"); break;
    case UQ_JSON_TRUE: uq_json_buf_puts(b, "true"); break;
    case UQ_JSON_FALSE: uq_json_buf_puts(b, "false"); break;
    case UQ_JSON_NUMBER: uq_json_buf_put(b, n->str, n->len); break;
    case UQ_JSON_STRING: uq_json_buf_string(b, n->str, n->len); break;
    case UQ_JSON_ARRAY:
    case UQ_JSON_OBJECT: {
        uq_json_buf_puts(b, n->type == UQ_JSON_ARRAY ? "[" : "{");
        int first = 1;
        for (const uq_json_node *c = uq_json_first(d, n); c; c = uq_json_next(d, c)) {
            if (!first) uq_json_buf_puts(b, ",");
            first = 0;
            if (n->type == UQ_JSON_OBJECT) {
                uq_json_buf_string(b, c->key, c->key_len);
                uq_json_buf_puts(b, ":");
            }
            write_value(d, c, b);
        }
        uq_json_buf_puts(b, n->type == UQ_JSON_ARRAY ? "]" : "}");
        break;
    }
    }
}

static void same_tree(const uq_json_doc *a, const uq_json_node *x, const uq_json_doc *b, const uq_json_node *y) {
    FUZZ_CHECK(x->type == y->type && x->count == y->count);
    FUZZ_CHECK((x->key == NULL) == (y->key == NULL));
    if (x->key) FUZZ_CHECK(x->key_len == y->key_len && memcmp(x->key, y->key, x->key_len) == 0);
    if (x->type == UQ_JSON_STRING || x->type == UQ_JSON_NUMBER)
        FUZZ_CHECK(x->len == y->len && memcmp(x->str, y->str, x->len) == 0);
    const uq_json_node *c = uq_json_first(a, x), *e = uq_json_first(b, y);
    for (; c && e; c = uq_json_next(a, c), e = uq_json_next(b, e)) same_tree(a, c, b, e);
    FUZZ_CHECK(!c && !e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    uq_json_doc doc;
    uq_clear_error();
    uq_status st = uq_json_parse(text, size, 0, &doc);
    if (st != UQ_OK) {
        FUZZ_CHECK(st == UQ_ERR_FORMAT || st == UQ_ERR_NOMEM);
        FUZZ_CHECK(uq_last_error()[0] != '\0');
        FUZZ_CHECK(doc.nodes == NULL && doc.nnodes == 0 && doc.strings == NULL);
        uq_json_free(&doc);
        return 0;
    }
    FUZZ_CHECK(doc.nnodes >= 1 && doc.nodes);
    unsigned char *seen = calloc((size_t)doc.nnodes, 1);
    if (!seen) {
        uq_json_free(&doc);
        return 0;
    }
    check_tree(&doc, 0, 0, seen);
    for (int32_t i = 0; i < doc.nnodes; i++) FUZZ_CHECK(seen[i]); /* every node reachable from the root */
    free(seen);
    FUZZ_CHECK(uq_json_root(&doc)->key == NULL && uq_json_root(&doc)->next == -1);

    /* the node limit is exact */
    uq_json_doc lim;
    FUZZ_CHECK(uq_json_parse(text, size, doc.nnodes, &lim) == UQ_OK && lim.nnodes == doc.nnodes);
    uq_json_free(&lim);
    if (doc.nnodes > 1) {
        FUZZ_CHECK(uq_json_parse(text, size, doc.nnodes - 1, &lim) == UQ_ERR_FORMAT);
        uq_json_free(&lim);
    }

    /* writer round trip */
    uq_json_buf b = {0};
    write_value(&doc, uq_json_root(&doc), &b);
    if (!b.failed) {
        uq_json_doc again;
        st = uq_json_parse(b.p, b.len, 0, &again);
        if (st != UQ_OK) fprintf(stderr, "re-serialized JSON does not parse: %s\n", uq_last_error());
        FUZZ_CHECK(st == UQ_OK);
        FUZZ_CHECK(again.nnodes == doc.nnodes);
        same_tree(&doc, uq_json_root(&doc), &again, uq_json_root(&again));
        uq_json_free(&again);
    }
    uq_json_buf_free(&b);
    uq_json_free(&doc);
    return 0;
}
