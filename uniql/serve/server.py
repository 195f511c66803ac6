"""``uniql serve``: an OpenAI-compatible HTTP server over the C runtime with continuous batching.

Optional extra ``uniql[serve]`` (Starlette + uvicorn). Endpoints:

* ``POST /v1/completions``, ``POST /v1/chat/completions`` (the model's own chat template, from
  ``tokenizer_config.json`` or ``chat_template.jinja``), both with ``"stream": true`` over server-sent events;
* ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text format);
* ``GET /admin/rate`` and ``POST /admin/rate {"rate": r}``: the pruning rate of an elastic artifact, changed live
  between decode steps (every KV cache stays valid). Each response reports the rate its tokens were decoded at
  (``"rate"``: the last, ``"rates"``: every rate used, in order; streamed chunks carry the rate of their token).

One engine thread owns the model: it admits waiting requests into free slots (prefill of the prompt on the slot's
own state), then runs one batched decode step for every active sequence (``uniql.models.batch.BatchDecoder``), samples
each next token and hands it to the request's asyncio queue. Requests join and leave between steps.

Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: malformed JSON or parameters 400,
unknown model 404, a prompt that does not fit the context 400 (``context_length_exceeded``), a full queue 429 and
a server shutting down 503 (both with ``Retry-After``). A client that disconnects frees its sequence at the next
step. Shutdown stops admitting, lets in-flight requests finish for ``drain_timeout`` seconds, then cancels the rest.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np

from uniql import _C
from uniql.models.batch import BatchDecoder, Sequence
from uniql.errors import InvalidArgumentError, RangeError, UnsupportedError

log = logging.getLogger("uniql.serve")

MAX_BODY_BYTES = 4 << 20
MAX_STOP = 4


def _require_stack() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UnsupportedError("uniql serve needs the optional dependencies starlette and uvicorn: "
                               "pip install 'uniql[serve]'") from None


# ------------------------------------------------------------------------------------- errors ----

class APIError(Exception):
    """An HTTP error answered in the OpenAI error shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(msg: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, msg, param=param, code=code)


# -------------------------------------------------------------------------------- chat template ----

def load_chat_template(model_dir: Path) -> tuple[str | None, dict[str, str]]:
    """(template source or None, special tokens {bos_token, eos_token}) of a model directory."""
    specials: dict[str, str] = {}
    template = None
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            cfg = {}
        if isinstance(cfg, dict):
            t = cfg.get("chat_template")
            if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
                named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
                t = named.get("default") or next(iter(named.values()), None)
            if isinstance(t, str) and t:
                template = t
            for k in ("bos_token", "eos_token"):
                v = cfg.get(k)
                if isinstance(v, dict):
                    v = v.get("content")
                if isinstance(v, str):
                    specials[k] = v
    jinja = model_dir / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template, specials


class ChatTemplate:
    """A Hugging Face chat template rendered in Jinja2's immutable sandbox."""

    def __init__(self, source: str, specials: dict[str, str]) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg: str) -> None:
            raise _bad(f"chat template: {msg}", "messages")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        self._t = env.from_string(source)
        self._specials = specials

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            return self._t.render(messages=messages, add_generation_prompt=True, **self._specials)
        except APIError:
            raise
        except Exception as e:  # a template error is the request's or the model's, never the server's crash
            raise _bad(f"chat template could not render the messages: {e}", "messages") from None


# -------------------------------------------------------------------------------------- engine ----

@dataclass(eq=False)  # compared by identity (the engine's lists)
class Request:
    """A generation request handed to the engine; events go to ``queue`` on ``loop``."""

    ids: np.ndarray
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    loop: asyncio.AbstractEventLoop
    queue: "asyncio.Queue[tuple]"
    cancelled: threading.Event = field(default_factory=threading.Event)
    stopped: bool = False  # ended by a stop string (counted as a finished request, not a cancelled one)
    created: float = field(default_factory=time.monotonic)
    # engine-side
    seq: Sequence | None = None
    last: int = -1
    generated: int = 0
    rng: np.ndarray | None = None

    def emit(self, ev: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the event loop is closed (server stopping): nobody listens any more
            self.cancelled.set()


class Engine:
    """The engine thread: continuous batching of every request over one model."""

    def __init__(self, model: Any, *, max_batch: int = 8, max_queue: int = 64, ctx: int | None = None,
                 max_chunk: int = 128, controller: Any = None) -> None:
        self.model = model
        # uniql.serve.adaptive.AdaptiveController or None: between decode steps it reads the device's signals and the
        # measured time per step (= time per output token of every sequence in the batch) and may move the rate
        self.controller = controller
        self.adaptive_switches = 0
        self.ctx = int(min(ctx, model.max_seq) if ctx else model.max_seq)
        self.decoder = BatchDecoder(model, max_batch=max_batch, max_seq=self.ctx, max_chunk=max_chunk)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.eos = frozenset(int(e) for e in model.config.eos_token_ids)
        self._cv = threading.Condition()
        self._waiting: collections.deque[Request] = collections.deque()
        self._active: list[Request] = []
        self._free: list[Sequence] = []
        self._nseq = 0
        self._pending_rate: float | None = None
        self._rate_done = threading.Event()
        self._stop = False
        self._draining = False
        self.alive = True
        self.rate = float(getattr(model, "rate", 0.0))
        # metrics
        self.tokens_total = 0
        self.prompt_tokens_total = 0
        self.requests_total: collections.Counter[str] = collections.Counter()
        self.steps_total = 0
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="uniql-engine", daemon=True)

    # ------------------------------------------------------------------ control (any thread) ----
    def start(self) -> None:
        self._thread.start()

    def submit(self, req: Request) -> None:
        with self._cv:
            if self._stop or self._draining or not self.alive:
                raise APIError(503, "the server is shutting down", type="server_error", code="unavailable",
                               retry_after=5)
            if len(self._waiting) >= self.max_queue:
                self.requests_total["rejected"] += 1
                raise APIError(429, f"server overloaded: {len(self._waiting)} requests already waiting",
                               type="rate_limit_error", code="overloaded", retry_after=1)
            self._waiting.append(req)
            self._cv.notify()

    def set_rate(self, rate: float, timeout: float = 30.0) -> float:
        """Validates ``rate`` now; the engine applies it between two decode steps. Returns the new rate."""
        m = self.model
        if not hasattr(m, "set_rate"):
            if rate != 0.0:
                raise _bad("this model is not an elastic uniql artifact: its only rate is 0", "rate")
            return 0.0
        from uniql.formats.artifact import check_rate

        try:
            rate = check_rate(rate, m.meta.max_rate)
        except RangeError as e:
            raise _bad(str(e), "rate") from None
        if rate < m.loaded_rate - 1e-12:
            raise _bad(f"rate {rate} is below the rate the server loaded ({m.loaded_rate}); restart it with "
                       f"--min-rate {rate}", "rate")
        with self._cv:
            self._rate_done.clear()
            self._pending_rate = rate
            self._cv.notify()
        if not self._rate_done.wait(timeout):
            raise APIError(503, "the engine did not apply the rate in time", type="server_error", retry_after=1)
        return self.rate

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Stops admitting; in-flight requests finish for ``drain_timeout`` s, then the rest are cancelled."""
        with self._cv:
            self._draining = True
            self._cv.notify()
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            with self._cv:
                if not self._active and not self._waiting:
                    break
            time.sleep(0.02)
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self.controller is not None:
            self.controller.close()  # its JSON-lines decision log

    # ------------------------------------------------------------------------------ queries ----
    def queue_length(self) -> int:
        return len(self._waiting)

    def active(self) -> int:
        return len(self._active)

    def tokens_per_second(self, span: float = 10.0) -> float:
        now = time.monotonic()
        w = [(t, n) for t, n in list(self._window) if now - t <= span]
        if not w:
            return 0.0
        return sum(n for _, n in w) / max(now - w[0][0], 1e-3) if len(w) > 1 else 0.0

    # ------------------------------------------------------------------- engine thread ----
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._stop or self._waiting or self._active or self._pending_rate is not None):
                        self._cv.wait(0.5)
                    if self._stop:
                        break
                    rate, self._pending_rate = self._pending_rate, None
                    admit = []
                    while self._waiting and len(self._active) + len(admit) < self.max_batch:
                        admit.append(self._waiting.popleft())
                try:
                    if rate is not None:
                        self._apply_rate(rate)
                    for req in admit:
                        self._admit(req)
                    self._step()
                except Exception as e:  # a bug: fail the requests in flight, keep serving the others
                    log.exception("engine step failed")
                    with self._cv:
                        reqs = list(self._active) + [r for r in admit if r.seq is not None and r not in self._active]
                        self._active.clear()
                    for r in reqs:
                        self._release(r)
                        self.requests_total["error"] += 1
                        r.emit(("error", APIError(500, f"engine failure: {e}", type="server_error")))
        except BaseException as e:  # pragma: no cover - a bug: fail every request rather than hang them
            log.exception("engine thread died")
            self.alive = False
            self._fail_all(APIError(500, f"engine failure: {e}", type="server_error"))
            return
        self._fail_all(APIError(503, "the server shut down before the request finished", type="server_error",
                                code="cancelled"))

    def _fail_all(self, err: APIError) -> None:
        with self._cv:
            reqs = list(self._active) + list(self._waiting)
            self._active.clear()
            self._waiting.clear()
        for r in reqs:
            r.emit(("error", err))

    def _apply_rate(self, rate: float) -> None:
        try:
            self.model.set_rate(rate)
            self.rate = float(self.model.rate)
            if self.controller is not None:  # an operator's choice: the controller starts from it (dwell restarts)
                self.controller.applied(self.rate)
        except Exception:
            log.exception("set_rate(%s) failed", rate)
        finally:
            self._rate_done.set()

    def _adapt(self, now: float, step_ms: float) -> None:
        """One controller step after a decode step; a new rate is applied before the next step (set_rate: the
        weights stay resident, so sequences in flight keep their KV caches and SSM states)."""
        try:
            new = self.controller.step(now, step_ms)
        except Exception:
            log.exception("adaptive controller step failed")
            return
        if new is None or abs(new - self.rate) <= 1e-12:
            return
        try:
            self.model.set_rate(new)
            self.adaptive_switches += 1
        except Exception:
            log.exception("adaptive set_rate(%s) failed", new)
        self.rate = float(self.model.rate)
        self.controller.applied(self.rate, now)

    def _seq(self) -> Sequence:
        if self._free:
            s = self._free.pop()
            s.reset()
            return s
        self._nseq += 1
        return self.decoder.new_sequence()

    def _release(self, req: Request) -> None:
        if req.seq is not None:
            self._free.append(req.seq)
            req.seq = None

    def _sample(self, req: Request, logits: np.ndarray) -> int:
        return int(_C.sample(logits, req.temperature, req.top_p, req.rng))

    def _after_token(self, req: Request, tok: int) -> bool:
        """Emits tok; True when the request is finished (and its sequence released)."""
        req.generated += 1
        req.last = tok
        self.tokens_total += 1
        finish = None
        if tok in self.eos:
            finish = "stop"
        elif req.generated >= req.max_tokens or req.seq.position >= self.ctx:
            finish = "length"
        req.emit(("token", tok, self.rate))
        if finish is not None:
            req.emit(("done", finish))
            self.requests_total["ok"] += 1
            self._release(req)
            return True
        return False

    def _admit(self, req: Request) -> None:
        if req.cancelled.is_set():
            self.requests_total["cancelled"] += 1
            return
        req.rng = np.array([req.seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
        req.seq = self._seq()
        try:
            logits = self.decoder.prefill(req.seq, req.ids)
            tok = self._sample(req, logits)
        except Exception as e:
            log.exception("prefill failed")
            self._release(req)
            self.requests_total["error"] += 1
            req.emit(("error", APIError(500, f"prefill failed: {e}", type="server_error")))
            return
        self.prompt_tokens_total += int(req.ids.size)
        if not self._after_token(req, tok):
            with self._cv:
                self._active.append(req)

    def _step(self) -> None:
        with self._cv:
            live = []
            for r in self._active:
                if r.cancelled.is_set():
                    self.requests_total["ok" if r.stopped else "cancelled"] += 1
                    self._release(r)
                else:
                    live.append(r)
            self._active[:] = live
        if not live:
            return
        t0 = time.perf_counter()
        try:
            logits = self.decoder.step([r.seq for r in live], np.array([r.last for r in live], np.int32))
        except Exception as e:
            log.exception("decode step failed")
            with self._cv:
                self._active[:] = [r for r in self._active if r not in live]
            for r in live:
                self._release(r)
                self.requests_total["error"] += 1
                r.emit(("error", APIError(500, f"decode step failed: {e}", type="server_error")))
            return
        self.steps_total += 1
        step_ms = (time.perf_counter() - t0) * 1e3
        now = time.monotonic()
        self._window.append((now, len(live)))
        while self._window and now - self._window[0][0] > 30.0:
            self._window.popleft()
        done = []
        for i, r in enumerate(live):
            try:
                if self._after_token(r, self._sample(r, logits[i])):
                    done.append(r)
            except Exception as e:
                log.exception("sampling failed")
                self._release(r)
                done.append(r)
                r.emit(("error", APIError(500, f"sampling failed: {e}", type="server_error")))
        if done:
            with self._cv:
                self._active[:] = [r for r in self._active if r not in done]
        if self.controller is not None:
            self._adapt(now, step_ms)


# ----------------------------------------------------------------------------- request parsing ----

def _num(body: dict, key: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    v = body.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"'{key}' must be a number, got {v!r}", key)
    if v < lo or v > hi or (lo_open and v == lo):
        raise _bad(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", key)
    return float(v)


def _int_or_none(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{key}' must be an integer, got {v!r}", key)
    return v


def _stops(body: dict) -> list[str]:
    s = body.get("stop")
    if s is None:
        return []
    if isinstance(s, str):
        s = [s]
    if not isinstance(s, list) or not all(isinstance(x, str) and x for x in s) or len(s) > MAX_STOP:
        raise _bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings", "stop")
    return s


def _text_content(c: Any, i: int) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for p in c:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise _bad(f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(p["text"])
        return "".join(parts)
    if c is None:
        return ""
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", "messages")


# --------------------------------------------------------------------------------- streaming text ----

class _Detok:
    """Incremental detokenization with stop strings: ``push`` returns the text that is now final."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tok, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""       # decoded text of every id so far
        self.sent = 0        # characters of text already handed out
        self.stopped = False
        self._hold = max((len(s) for s in stops), default=1) - 1

    def _decode(self) -> str:
        if self.tok is None:
            return ""
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        self.text = self._decode()
        for s in self.stops:
            k = self.text.find(s, max(0, self.sent - len(s)))
            if k >= 0:
                self.stopped = True
                out = self.text[self.sent:k] if k > self.sent else ""
                self.sent = max(self.sent, k)
                return out
        end = len(self.text)
        if self.text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            end -= 1
        end = max(self.sent, end - self._hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out = self.text[self.sent:]
        self.sent = len(self.text)
        return out


# -------------------------------------------------------------------------------------- server ----

class Server:
    """The HTTP application (Starlette) over an :class:`Engine`."""

    def __init__(self, model: Any, model_name: str, *, model_dir: Path | None = None, max_batch: int = 8,
                 max_queue: int = 64, ctx: int | None = None, drain_timeout: float = 10.0,
                 admin_token: str | None = None, api_key: str | None = None, max_chunk: int = 128,
                 controller: Any = None) -> None:
        _require_stack()
        self.model = model
        self.model_name = model_name
        self.tokenizer = getattr(model, "tokenizer", None)
        self.engine = Engine(model, max_batch=max_batch, max_queue=max_queue, ctx=ctx, max_chunk=max_chunk,
                             controller=controller)
        self.drain_timeout = drain_timeout
        self.admin_token, self.api_key = admin_token, api_key
        self.created = int(time.time())
        self.chat: ChatTemplate | None = None
        self.chat_error = "the model has no chat template (tokenizer_config.json chat_template or chat_template.jinja)"
        if model_dir is not None:
            src, specials = load_chat_template(Path(model_dir))
            if src is not None:
                try:
                    self.chat = ChatTemplate(src, specials)
                except Exception as e:
                    self.chat_error = f"the model's chat template does not compile: {e}"
        self.app = self._build_app()

    # ---------------------------------------------------------------------------- app ----
    def _build_app(self) -> Any:
        from contextlib import asynccontextmanager

        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            self.engine.start()
            try:
                yield
            finally:
                await asyncio.get_running_loop().run_in_executor(None, self.engine.stop, self.drain_timeout)

        async def http_error(request: Any, exc: Any) -> Any:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
            return self._error(APIError(exc.status_code, str(exc.detail), code=code))

        routes = [
            Route("/v1/completions", self._wrap(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._wrap(self.chat_completions), methods=["POST"]),
            Route("/v1/models", self._wrap(self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._wrap(self.model_info), methods=["GET"]),
            Route("/health", self._wrap(self.health), methods=["GET"]),
            Route("/metrics", self._wrap(self.metrics), methods=["GET"]),
            Route("/admin/rate", self._wrap(self.admin_rate), methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})

    def _error(self, e: APIError) -> Any:
        from starlette.responses import JSONResponse

        headers = {"Retry-After": str(int(math.ceil(e.retry_after)))} if e.retry_after is not None else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    def _wrap(self, fn: Callable) -> Callable:
        async def handler(request: Any) -> Any:
            try:
                return await fn(request)
            except APIError as e:
                return self._error(e)
            except Exception as e:  # never crash: a 500 in the OpenAI shape
                log.exception("request failed")
                return self._error(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))
        return handler

    def _auth(self, request: Any, token: str | None) -> None:
        if token is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {token}":
            raise APIError(401, "missing or wrong bearer token", type="authentication_error", code="invalid_api_key")

    async def _json(self, request: Any) -> dict:
        n = request.headers.get("content-length")
        if n is not None and (not n.isdigit() or int(n) > MAX_BODY_BYTES):
            raise APIError(413, f"request body larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise APIError(413, f"request body larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object", code="invalid_json")
        return body

    def _check_model(self, body: dict) -> None:
        m = body.get("model")
        if not isinstance(m, str) or not m:
            raise _bad("'model' is required (a string)", "model")
        if m != self.model_name:
            raise APIError(404, f"The model '{m}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")

    # ------------------------------------------------------------------------ endpoints ----
    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        e = self.engine
        if not e.alive or e._draining or e._stop:
            return JSONResponse({"status": "unavailable"}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok", "model": self.model_name, "rate": e.rate, "active": e.active(),
                             "queued": e.queue_length()})

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request, self.api_key)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model_info(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request, self.api_key)
        mid = request.path_params["model_id"]
        if mid != self.model_name:
            raise APIError(404, f"The model '{mid}' does not exist", param="model", code="model_not_found")
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict:
        m = self.model
        card = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "uniql",
                "max_model_len": self.engine.ctx, "rate": self.engine.rate}
        if hasattr(m, "meta"):
            card["max_rate"] = m.meta.max_rate
            card["min_rate"] = m.loaded_rate
        return card

    async def metrics(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        e = self.engine
        lines = []

        def metric(name: str, kind: str, help_: str, value: float, labels: str = "") -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{labels} {value}")

        metric("uniql_rate", "gauge", "Pruning rate the engine decodes at.", e.rate)
        metric("uniql_tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.",
               round(e.tokens_per_second(), 3))
        metric("uniql_queue_length", "gauge", "Requests waiting for a sequence slot.", e.queue_length())
        metric("uniql_active_sequences", "gauge", "Sequences in the decode batch.", e.active())
        metric("uniql_max_batch", "gauge", "Most sequences per decode step.", e.max_batch)
        metric("uniql_resident_memory_bytes", "gauge", "Resident set size of the server process.", _rss_bytes())
        metric("uniql_generated_tokens_total", "counter", "Tokens generated.", e.tokens_total)
        metric("uniql_prompt_tokens_total", "counter", "Prompt tokens prefilled.", e.prompt_tokens_total)
        metric("uniql_decode_steps_total", "counter", "Batched decode steps.", e.steps_total)
        metric("uniql_adaptive", "gauge", "1 when the adaptive controller chooses the rate.", int(e.controller is not None))
        metric("uniql_adaptive_switches_total", "counter", "Rate changes made by the adaptive controller.",
               e.adaptive_switches)
        lines.append("# HELP uniql_requests_total Requests by outcome.")
        lines.append("# TYPE uniql_requests_total counter")
        for k in ("ok", "cancelled", "error", "rejected"):
            lines.append(f'uniql_requests_total{{outcome="{k}"}} {e.requests_total[k]}')
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def admin_rate(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request, self.admin_token)
        if request.method == "GET":
            return JSONResponse({"rate": self.engine.rate, **self._rate_range()})
        body = await self._json(request)
        rate = body.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise _bad(f"'rate' must be a number, got {rate!r}", "rate")
        prev = self.engine.rate
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(None, self.engine.set_rate, float(rate))
        return JSONResponse({"rate": new, "previous": prev, **self._rate_range()})

    def _rate_range(self) -> dict:
        m = self.model
        if hasattr(m, "meta"):
            return {"min_rate": m.loaded_rate, "max_rate": m.meta.max_rate}
        return {"min_rate": 0.0, "max_rate": 0.0}

    # ------------------------------------------------------------------------ generation ----
    def _common(self, body: dict, default_max: int | None) -> dict:
        self._check_model(body)
        n = _int_or_none(body, "n")
        if n is not None and n != 1:
            raise _bad("only n = 1 is supported", "n")
        if body.get("logprobs") not in (None, False) or body.get("echo") not in (None, False):
            raise _bad("logprobs and echo are not supported", "logprobs")
        if body.get("best_of") not in (None, 1):
            raise _bad("best_of is not supported", "best_of")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise _bad("'stream' must be a boolean", "stream")
        mt = _int_or_none(body, "max_completion_tokens")
        if mt is None:
            mt = _int_or_none(body, "max_tokens")
        if mt is not None and mt < 1:
            raise _bad(f"max_tokens must be at least 1, got {mt}", "max_tokens")
        seed = _int_or_none(body, "seed")
        so = body.get("stream_options")
        if so is not None and not isinstance(so, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        return {"stream": stream, "max_tokens": mt if mt is not None else default_max,
                "temperature": _num(body, "temperature", 1.0, 0.0, 2.0),
                "top_p": _num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                "seed": secrets.randbits(64) if seed is None else seed, "stop": _stops(body),
                "include_usage": bool(so and so.get("include_usage"))}

    def _encode(self, text: str, special: bool) -> np.ndarray:
        if self.tokenizer is None:
            raise _bad("the model has no tokenizer: send the prompt as a list of token ids", "prompt")
        enc = self.tokenizer.encode(text, add_special_tokens=special)
        return np.asarray(enc.ids, np.int32)

    def _prompt_ids(self, body: dict) -> np.ndarray:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            ids = self._encode(p, True)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            ids = np.asarray(p, np.int64)
            vocab = self.engine.decoder.vocab_size
            if ids.min() < 0 or ids.max() >= vocab:
                raise _bad(f"prompt token ids must be in [0, {vocab})", "prompt")
            ids = ids.astype(np.int32)
        else:
            raise _bad("'prompt' must be a string, a list of token ids, or a list with one of those", "prompt")
        return ids

    def _chat_ids(self, body: dict) -> np.ndarray:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _bad("'messages' must be a non-empty list", "messages")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad(f"messages[{i}] must be an object with a 'role'", "messages")
            if m["role"] not in ("system", "user", "assistant", "developer", "tool"):
                raise _bad(f"messages[{i}].role {m['role']!r} is not supported", "messages")
            clean.append({"role": "system" if m["role"] == "developer" else m["role"],
                          "content": _text_content(m.get("content"), i)})
        if self.chat is None:
            raise _bad(self.chat_error, "messages", code="no_chat_template")
        return self._encode(self.chat.render(clean), False)

    def _make_request(self, ids: np.ndarray, opts: dict) -> Request:
        if ids.size == 0:
            raise _bad("the prompt is empty (no tokens)", "prompt")
        ctx = self.engine.ctx
        if ids.size >= ctx:
            raise _bad(f"This model's maximum context length is {ctx} tokens; the prompt has {ids.size} tokens "
                       "(at least one must be left for the completion)", "prompt", "context_length_exceeded")
        room = ctx - int(ids.size)
        mt = room if opts["max_tokens"] is None else min(opts["max_tokens"], room)
        loop = asyncio.get_running_loop()
        return Request(ids=ids, max_tokens=mt, temperature=opts["temperature"], top_p=opts["top_p"],
                       seed=opts["seed"], loop=loop, queue=asyncio.Queue())

    async def completions(self, request: Any) -> Any:
        self._auth(request, self.api_key)
        body = await self._json(request)
        opts = self._common(body, 16)
        return await self._generate(request, self._prompt_ids(body), opts, chat=False)

    async def chat_completions(self, request: Any) -> Any:
        self._auth(request, self.api_key)
        body = await self._json(request)
        opts = self._common(body, None)
        return await self._generate(request, self._chat_ids(body), opts, chat=True)

    async def _generate(self, request: Any, ids: np.ndarray, opts: dict, chat: bool) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        req = self._make_request(ids, opts)
        self.engine.submit(req)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        detok = _Detok(self.tokenizer, opts["stop"])
        if not opts["stream"]:
            try:
                text, finish, rates, n = await self._collect(request, req, detok)
            except BaseException:
                req.cancelled.set()
                raise
            usage = {"prompt_tokens": int(ids.size), "completion_tokens": n, "total_tokens": int(ids.size) + n}
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                          "logprobs": None}
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            rate = rates[-1] if rates else self.engine.rate
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": self.model_name,
                                 "choices": [choice], "usage": usage, "rate": rate, "rates": rates},
                                headers={"X-Uniql-Rate": str(rate)})

        async def events() -> AsyncIterator[str]:
            chunk_obj = "chat.completion.chunk" if chat else "text_completion"
            n = 0

            def chunk(delta: str | None, finish: str | None, rate: float, role: bool = False) -> str:
                if chat:
                    d: dict = {"role": "assistant", "content": ""} if role else (
                        {} if delta is None else {"content": delta})
                    choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
                else:
                    choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
                payload = {"id": rid, "object": chunk_obj, "created": created, "model": self.model_name,
                           "choices": [choice], "rate": rate}
                return f"data: {json.dumps(payload)}\n\n"

            try:
                rate = self.engine.rate
                if chat:
                    yield chunk(None, None, rate, role=True)
                while True:
                    ev = await req.queue.get()
                    if ev[0] == "token":
                        n += 1
                        rate = ev[2]
                        piece = detok.push(ev[1])
                        if detok.stopped:
                            req.stopped = True
                            req.cancelled.set()
                            if piece:
                                yield chunk(piece, None, rate)
                            yield chunk(None, "stop", rate)
                            break
                        if piece:
                            yield chunk(piece, None, rate)
                    elif ev[0] == "done":
                        rest = detok.flush()
                        if rest:
                            yield chunk(rest, None, rate)
                        yield chunk(None, ev[1], rate)
                        break
                    else:
                        err: APIError = ev[1]
                        yield f"data: {json.dumps(err.body())}\n\n"
                        break
                if opts["include_usage"]:
                    usage = {"prompt_tokens": int(ids.size), "completion_tokens": n,
                             "total_tokens": int(ids.size) + n}
                    payload = {"id": rid, "object": chunk_obj, "created": created, "model": self.model_name,
                               "choices": [], "usage": usage, "rate": rate}
                    yield f"data: {json.dumps(payload)}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # normal end, client disconnect (the task is cancelled) or server shutdown
                req.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Uniql-Rate": str(self.engine.rate)})

    async def _collect(self, request: Any, req: Request, detok: _Detok) -> tuple[str, str, list[float], int]:
        """Waits for a non-streamed request; cancels it when the client goes away."""

        async def watch() -> None:  # the body is read: the next ASGI message is the client going away
            while True:
                msg = await request.receive()
                if msg.get("type") == "http.disconnect":
                    req.cancelled.set()
                    req.queue.put_nowait(("disconnected",))
                    return

        watcher = asyncio.create_task(watch())
        try:
            return await self._events(req, detok)
        finally:
            watcher.cancel()

    @staticmethod
    async def _events(req: Request, detok: _Detok) -> tuple[str, str, list[float], int]:
        """(text, finish reason, rates used, tokens) of a request's events."""
        rates: list[float] = []
        parts: list[str] = []
        n = 0
        while True:
            ev = await req.queue.get()
            if ev[0] == "disconnected":
                raise APIError(499, "client disconnected", code="client_closed")
            if ev[0] == "token":
                n += 1
                if not rates or rates[-1] != ev[2]:
                    rates.append(ev[2])
                parts.append(detok.push(ev[1]))
                if detok.stopped:
                    req.stopped = True
                    req.cancelled.set()
                    return "".join(parts), "stop", rates, n
            elif ev[0] == "done":
                parts.append(detok.flush())
                return "".join(parts), ev[1], rates, n
            else:
                raise ev[1]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ------------------------------------------------------------------------------------ entry ----

def build_server(path: str | Path, *, rate: float = 0.0, min_rate: float | None = None, model_name: str | None = None,
                 max_batch: int = 8, max_queue: int = 64, ctx: int | None = None, drain_timeout: float = 10.0,
                 admin_token: str | None = None, api_key: str | None = None,
                 adaptive: dict[str, Any] | None = None, kv_dtype: str = "fp16") -> Server:
    """Loads the model at ``path`` (an elastic artifact or a checkpoint) and builds the server. The artifact is
    loaded at ``min_rate`` (default 0: every rate stays reachable through ``/admin/rate``; a higher one skips the
    weights below it and saves memory) and then set to ``rate``. ``adaptive``: keyword arguments of
    :class:`uniql.serve.adaptive.AdaptiveController` (e.g. ``{"tpot_ms": 50, "max_rate": 0.35}``) to let the device
    choose the rate between decode steps, within [``min_rate``, ``max_rate``]; the weights stay resident (the
    server switches with ``set_rate``, so sequences in flight keep their state). ``kv_dtype``: the sequences' KV
    cache, "fp16" (default) or "fp32" (``uniql.load``)."""
    _require_stack()
    from uniql.formats.checkpoint import load

    path = Path(path)
    lo = 0.0 if min_rate is None else float(min_rate)
    if lo > rate:
        raise InvalidArgumentError(f"--min-rate {lo} is above --rate {rate}")
    ctx_seq = None if ctx is None else int(ctx)
    model = load(path, rate=lo, max_seq=ctx_seq, kv_dtype=kv_dtype)
    if rate != lo:
        if not hasattr(model, "set_rate"):
            raise InvalidArgumentError(f"{str(path)!r} is not an elastic artifact: it only runs at rate 0")
        model.set_rate(rate)
    controller = None
    if adaptive is not None:
        if not hasattr(model, "set_rate"):
            raise InvalidArgumentError(f"--adaptive needs an elastic artifact; {str(path)!r} only runs at rate 0")
        from uniql.serve.adaptive import AdaptiveController

        kw = dict(adaptive)
        kw["min_rate"] = max(lo, float(kw.get("min_rate", lo)))
        kw["follow_memory"] = False
        controller = AdaptiveController(model, **kw)
    return Server(model, model_name or path.name, model_dir=path, max_batch=max_batch, max_queue=max_queue, ctx=ctx,
                  drain_timeout=drain_timeout, admin_token=admin_token, api_key=api_key, controller=controller)


def run(server: Server, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serves until interrupted (Ctrl-C / SIGTERM: drains then cancels in-flight requests)."""
    import uvicorn

    config = uvicorn.Config(server.app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=max(1, int(server.drain_timeout)))
    uvicorn.Server(config).run()
