/*
 * status.c -- status codes and the thread-local error message of libuniql.
 *
 * Every public function returns a uq_status; on failure it stores a human-readable explanation (which
 * argument, which value) in a per-thread buffer that the binding turns into a Python exception message.
 */
#include "uniql.h"

#include <stdarg.h>
#include <stdio.h>

#define UQ_ERRBUF 1024

static _Thread_local char uq_errbuf[UQ_ERRBUF];

const char *uq_status_name(uq_status s) {
    switch (s) {
    case UQ_OK: return "UQ_OK";
    case UQ_ERR_ARG: return "UQ_ERR_ARG";
    case UQ_ERR_SHAPE: return "UQ_ERR_SHAPE";
    case UQ_ERR_DTYPE: return "UQ_ERR_DTYPE";
    case UQ_ERR_NOMEM: return "UQ_ERR_NOMEM";
    case UQ_ERR_IO: return "UQ_ERR_IO";
    case UQ_ERR_FORMAT: return "UQ_ERR_FORMAT";
    case UQ_ERR_NUMERIC: return "UQ_ERR_NUMERIC";
    case UQ_ERR_UNSUPPORTED: return "UQ_ERR_UNSUPPORTED";
    case UQ_ERR_RANGE: return "UQ_ERR_RANGE";
    case UQ_ERR_STATE: return "UQ_ERR_STATE";
    case UQ_ERR_INTERNAL: return "UQ_ERR_INTERNAL";
    }
    return "UQ_ERR_UNKNOWN";
}

const char *uq_last_error(void) { return uq_errbuf; }

void uq_clear_error(void) { uq_errbuf[0] = '\0'; }

uq_status uq_set_error(uq_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(uq_errbuf, sizeof uq_errbuf, fmt, ap);
    va_end(ap);
    return s;
}

const char *uq_version(void) { return "0.1.0"; }
