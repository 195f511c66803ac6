"""``uniql serve`` end to end with the official ``openai`` client against a server on 127.0.0.1 (a tiny random int4
elastic Llama with a word-level tokenizer and a chat template): completions and chat, streamed and not, 16
concurrent clients whose greedy outputs equal lone decoding at the same rate, the live rate endpoint, error answers
(malformed JSON, unknown model, bad parameters, oversized prompt, overload, shutdown), a mid-stream disconnect that
frees its sequence, and a shutdown that ends in-flight streams."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

import uniql  # noqa: E402
from uniql.serve.server import APIError, Request, Server, build_server  # noqa: E402

from _helpers import tiny_llama_config, tiny_llama_tensors, write_tiny_llama  # noqa: E402

VOCAB, CTX, RATE = 96, 128, 0.2
TEMPLATE = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
            "{% if add_generation_prompt %}w5{% endif %}")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("serve")
    cfg = tiny_llama_config(VOCAB, 64, 128, 2, 4, 2, 16)
    cfg["max_position_embeddings"] = CTX
    src = write_tiny_llama(root / "src", cfg, tiny_llama_tensors(cfg, seed=11))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(src / "tokenizer.json"))
    # the template in its own file, as transformers >= 4.5x saves it (the artifact must carry it along)
    (src / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (src / "chat_template.jinja").write_text(TEMPLATE)
    calib = np.random.default_rng(0).integers(3, VOCAB, size=(8, 32))
    return uniql.compress(src, root / "tiny", calibration=calib, num_samples=8, seq_len=32, progress=False,
                          quantize=True)


class Running:
    """A uvicorn server in a thread on a free 127.0.0.1 port."""

    def __init__(self, server: Server) -> None:
        self.server = server
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(server.app, log_level="warning", timeout_graceful_shutdown=2)
        self.uv = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.uv.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.uv.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def client(self, **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=30, **kw)

    def stop(self) -> None:
        self.uv.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "server did not shut down"


@pytest.fixture(scope="module")
def srv(artifact):
    r = Running(build_server(artifact, rate=RATE, max_batch=8, max_queue=64, drain_timeout=2))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def ref(artifact):
    """Lone greedy decoding at a rate: (prompt str, n, rate) -> generated text."""
    model = uniql.load(artifact)
    cache = {}

    def gen(prompt: str, n: int, rate: float = RATE, special: bool = True) -> str:
        key = (prompt, n, rate, special)
        if key not in cache:
            model.set_rate(rate)
            ids = model.tokenizer.encode(prompt, add_special_tokens=special).ids
            out = model.generate(np.array(ids), max_new_tokens=n, temperature=0.0)
            cache[key] = model.tokenizer.decode(out, skip_special_tokens=True)
        return cache[key]

    return gen


def _prompt(i: int) -> str:
    rng = np.random.default_rng(100 + i)
    return " ".join(f"w{t}" for t in rng.integers(3, VOCAB, 2 + i % 7))


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# ---------------------------------------------------------------------------------------------- happy paths ----

def test_completions_and_chat_streamed_and_not(srv, ref):
    c = srv.client()
    assert [m.id for m in c.models.list().data] == ["tiny"]
    p = _prompt(0)
    r = c.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0)
    assert r.choices[0].text == ref(p, 12) and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == len(p.split())
    assert r.model_extra["rate"] == RATE and r.model_extra["rates"] == [RATE]
    chunks = list(c.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length" and all(ch.model_extra["rate"] == RATE for ch in chunks)

    msgs = [{"role": "system", "content": "w9 w10"}, {"role": "user", "content": "w11 w12 w13"}]
    rendered = "w3 w9 w10 w4 w3 w11 w12 w13 w4 w5"
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=9, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref(rendered, 9, special=False)
    assert r.usage.prompt_tokens == 10
    s = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=9, temperature=0, stream=True,
                                  stream_options={"include_usage": True})
    chunks = list(s)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 9

    # stop strings cut the text (streamed or not) and end the request
    full = ref(p, 12).split()
    stop = full[4]
    want = " ".join(full[:full.index(stop)])
    r = c.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0, stop=[" " + stop])
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    s = c.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0, stop=" " + stop, stream=True)
    assert "".join(ch.choices[0].text for ch in s) == want

    # sampling is seeded: same seed, same text
    a = c.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0.9, top_p=0.9, seed=3)
    b = c.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0.9, top_p=0.9, seed=3)
    assert a.choices[0].text == b.choices[0].text
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"


def test_sixteen_concurrent_clients_equal_lone_decoding(srv, ref):
    """16 clients at once over 8 slots (queueing, joins and leaves): every request answered, each greedy output
    equal to decoding its prompt alone at the server's rate."""
    jobs = [(_prompt(i), 4 + (i * 5) % 17, i % 2 == 0) for i in range(16)]
    want = [ref(p, n) for p, n, _ in jobs]
    steps0 = _metric(srv.url, "uniql_decode_steps_total")

    def one(job):
        p, n, stream = job
        c = srv.client()
        if stream:
            return "".join(ch.choices[0].text for ch in c.completions.create(
                model="tiny", prompt=p, max_tokens=n, temperature=0, stream=True))
        return c.completions.create(model="tiny", prompt=p, max_tokens=n, temperature=0).choices[0].text

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(one, jobs, timeout=60))
    assert time.monotonic() - t0 < 60
    assert got == want
    # batching happened: fewer decode steps than tokens decoded after the first of each request
    steps = _metric(srv.url, "uniql_decode_steps_total") - steps0
    assert steps < sum(n - 1 for _, n, _ in jobs)


def test_admin_rate_changes_live(srv, ref):
    c = srv.client()
    p = _prompt(3)
    try:
        r = httpx.post(srv.url + "/admin/rate", json={"rate": 0.3})
        assert r.status_code == 200 and r.json()["rate"] == 0.3 and r.json()["previous"] == RATE
        out = c.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0)
        assert out.model_extra["rate"] == 0.3 and out.choices[0].text == ref(p, 10, rate=0.3)
        assert _metric(srv.url, "uniql_rate") == 0.3
        assert httpx.get(srv.url + "/admin/rate").json() == {"rate": 0.3, "min_rate": 0.0, "max_rate": 0.35}
        for bad in ({"rate": 0.9}, {"rate": -1}, {"rate": "x"}, {}):
            e = httpx.post(srv.url + "/admin/rate", json=bad)
            assert e.status_code == 400 and e.json()["error"]["param"] == "rate"
    finally:
        httpx.post(srv.url + "/admin/rate", json={"rate": RATE})
    assert httpx.get(srv.url + "/admin/rate").json()["rate"] == RATE


def test_metrics_exposition(srv):
    text = httpx.get(srv.url + "/metrics").text
    for name in ("uniql_rate", "uniql_tokens_per_second", "uniql_queue_length", "uniql_resident_memory_bytes",
                 "uniql_generated_tokens_total", "uniql_active_sequences"):
        assert f"# TYPE {name} " in text
    assert _metric(srv.url, "uniql_resident_memory_bytes") > 1e6


def test_chat_template_sources(tmp_path):
    """tokenizer_config.json's chat_template (a string or a list of named templates) wins over chat_template.jinja;
    special tokens come from the config; a template error is a 400, not a crash."""
    from uniql.serve.server import ChatTemplate, load_chat_template

    assert load_chat_template(tmp_path) == (None, {})
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0]['content'] }}")
    assert load_chat_template(tmp_path)[0] == "J{{ messages[0]['content'] }}"
    cfg = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}],
           "bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    src, sp = load_chat_template(tmp_path)
    assert sp == {"bos_token": "<s>", "eos_token": "</s>"}
    assert ChatTemplate(src, sp).render([{"role": "user", "content": "x"}]) == "<s>D"
    bad = ChatTemplate("{{ raise_exception('no system role') }}", {})
    with pytest.raises(APIError, match="no system role") as e:
        bad.render([{"role": "system", "content": "x"}])
    assert e.value.status == 400
    with pytest.raises(APIError, match="could not render"):
        ChatTemplate("{{ messages.__class__.__mro__ }}{{ 1 / 0 }}", {}).render([])


@pytest.mark.realmodel
def test_smollm2_chat_template_equals_transformers():
    """SmolLM2's own template (chat_template.jinja of the converted checkpoint) renders as transformers'
    apply_chat_template, with and without a system message."""
    from uniql.demo import ensure_smollm2
    from uniql.serve.server import ChatTemplate, load_chat_template

    transformers = pytest.importorskip("transformers")
    try:
        d = ensure_smollm2()
    except Exception as e:  # noqa: BLE001 - no GGUF / tokenizer here
        pytest.skip(f"SmolLM2 not available: {e}")
    src, sp = load_chat_template(d)
    assert src is not None
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    for msgs in ([{"role": "user", "content": "Hi there"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]):
        assert ChatTemplate(src, sp).render(msgs) == tok.apply_chat_template(msgs, tokenize=False,
                                                                             add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------- bad requests ----

def test_bad_requests_get_openai_errors_while_others_continue(srv, ref):
    c = srv.client()
    p = _prompt(5)
    with ThreadPoolExecutor(1) as ex:  # a long request keeps decoding meanwhile
        long = ex.submit(lambda: c.completions.create(model="tiny", prompt=p, max_tokens=60, temperature=0))

        def post(path, raw=None, **body):
            r = httpx.post(srv.url + path, content=raw if raw is not None else json.dumps(body),
                           headers={"content-type": "application/json"})
            return r.status_code, r.json()["error"]

        assert post("/v1/completions", raw=b'{"model": "tiny", "prompt": ')[0] == 400
        assert post("/v1/completions", raw=b"\xff\xfe")[1]["code"] == "invalid_json"
        assert post("/v1/completions", raw=b"[1, 2]")[0] == 400
        st, err = post("/v1/completions", model="tiny", prompt="w3", max_tokens=-5)
        assert st == 400 and err["param"] == "max_tokens"
        assert post("/v1/completions", model="tiny", prompt="w3", temperature=7)[0] == 400
        assert post("/v1/completions", model="tiny", prompt="w3", n=3)[1]["param"] == "n"
        assert post("/v1/completions", model="tiny", prompt=[5, 1000])[1]["param"] == "prompt"
        assert post("/v1/completions", model="tiny", prompt={"a": 1})[0] == 400
        assert post("/v1/chat/completions", model="tiny", messages=[])[1]["param"] == "messages"
        assert post("/v1/chat/completions", model="tiny", messages=[{"role": "robot", "content": "x"}])[0] == 400
        assert post("/v1/chat/completions", model="tiny", messages=[{"role": "user", "content": 5}])[0] == 400
        with pytest.raises(openai.NotFoundError) as e:
            c.completions.create(model="nope", prompt="w3")
        assert e.value.body["code"] == "model_not_found"
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            c.completions.create(model="tiny", prompt="w3", max_tokens=-1)
        big = " ".join(["w7"] * CTX)
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny", prompt=big, max_tokens=4)
        assert e.value.body["code"] == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": big}])
        assert e.value.body["code"] == "context_length_exceeded"
        r = httpx.get(srv.url + "/v1/nothing")
        assert r.status_code == 404 and "error" in r.json()
        assert httpx.get(srv.url + "/v1/completions").status_code == 405
        # a prompt that nearly fills the context: max_tokens is cut to the room left
        near = " ".join(["w8"] * (CTX - 3))
        r = c.completions.create(model="tiny", prompt=near, max_tokens=50, temperature=0)
        assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
        assert long.result(timeout=60).choices[0].text == ref(p, 60)


def test_mid_stream_disconnect_frees_the_sequence(srv, ref, monkeypatch):
    eng = srv.server.engine
    step = eng.decoder.step

    def slow_step(seqs, ids):  # keeps the long request in flight while the client goes away
        time.sleep(0.02)
        return step(seqs, ids)

    monkeypatch.setattr(eng.decoder, "step", slow_step)
    cancelled0 = _metric(srv.url, 'uniql_requests_total{outcome="cancelled"}')
    body = {"model": "tiny", "prompt": _prompt(7), "max_tokens": CTX, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", srv.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
    # the server notices, cancels and frees the slot; another request is served normally meanwhile
    p = _prompt(8)
    assert srv.client().completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0).choices[0].text \
        == ref(p, 6)
    deadline = time.monotonic() + 10
    while _metric(srv.url, 'uniql_requests_total{outcome="cancelled"}') <= cancelled0:
        assert time.monotonic() < deadline, "the disconnected stream was not cancelled"
        time.sleep(0.05)
    assert _metric(srv.url, "uniql_active_sequences") == 0
    # a non-streamed request whose client gives up (read timeout: the connection closes) is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    deadline = time.monotonic() + 10
    while _metric(srv.url, 'uniql_requests_total{outcome="cancelled"}') <= cancelled0 + 1:
        assert time.monotonic() < deadline, "the abandoned request was not cancelled"
        time.sleep(0.05)
    assert _metric(srv.url, "uniql_active_sequences") == 0


def test_overload_and_draining_answer_with_retry_after(artifact):
    """A full queue gives 429 and a draining server 503, both with Retry-After (engine not started: nothing is
    taken off the queue)."""
    from starlette.testclient import TestClient

    s = build_server(artifact, max_batch=1, max_queue=2)
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        for _ in range(2):
            s.engine.submit(Request(ids=np.array([3], np.int32), max_tokens=1, temperature=0.0, top_p=1.0, seed=0,
                                    loop=loop, queue=asyncio.Queue()))
        client = TestClient(s.app)  # no `with`: the lifespan (engine thread) does not run
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "w3", "max_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        s.engine._draining = True
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "w3"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert client.get("/health").status_code == 503
        with pytest.raises(APIError):
            s.engine.submit(Request(ids=np.array([3], np.int32), max_tokens=1, temperature=0.0, top_p=1.0, seed=0,
                                    loop=loop, queue=asyncio.Queue()))
    finally:
        loop.close()


def test_shutdown_ends_in_flight_streams(artifact):
    """Shutdown while streams run: each stream ends (finished, or an error event for a cancelled one), the server
    thread exits, nothing hangs."""
    r = Running(build_server(artifact, max_batch=2, drain_timeout=0.3))
    ends = []

    def stream():
        body = {"model": "tiny", "prompt": "w3 w4", "max_tokens": CTX, "temperature": 0, "stream": True}
        try:
            with httpx.stream("POST", r.url + "/v1/completions", json=body, timeout=30) as resp:
                last = [line for line in resp.iter_lines() if line.startswith("data: ")][-1]
                ends.append(last)
        except httpx.HTTPError as e:  # the connection closed by the server is also an end
            ends.append(type(e).__name__)

    ts = [threading.Thread(target=stream) for _ in range(3)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    r.stop()
    for t in ts:
        t.join(timeout=30)
        assert not t.is_alive()
    assert len(ends) == 3


def test_hybrid_model_served_batched():
    """A Mamba2-hybrid (Nemotron-H) model behind the same engine: concurrent token-id prompts, streamed and not,
    decode in batched steps and give the tokens of lone greedy decoding."""
    pytest.importorskip("torch")
    from starlette.testclient import TestClient
    from test_ssm import make_hf

    from uniql.models.runtime import Model

    _, cd, sd = make_hf("nemotron_h", seed=4)
    model = Model.from_hf_tensors(cd, sd, max_seq=48)
    prompts = [np.random.default_rng(i).integers(0, 128, 3 + 2 * i).tolist() for i in range(4)]
    want = [model.generate(np.array(p), max_new_tokens=10) for p in prompts]
    server = Server(model, "nemo", max_batch=4)
    assert server.engine.decoder.batched
    seen: dict[tuple, list[int]] = {}
    after = server.engine._after_token

    def spy(req, tok):  # the token ids the engine hands to each request
        seen.setdefault(tuple(req.ids.tolist()), []).append(tok)
        return after(req, tok)

    server.engine._after_token = spy
    with TestClient(server.app) as client, ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda ip: client.post("/v1/completions", json={
            "model": "nemo", "prompt": ip[1], "max_tokens": 10, "temperature": 0, "stream": ip[0] % 2 == 0}),
            enumerate(prompts)))
        assert all(o.status_code == 200 for o in outs)
        assert outs[0].text.rstrip().endswith("data: [DONE]") and outs[1].json()["usage"]["completion_tokens"] == 10
        r = client.post("/v1/chat/completions", json={"model": "nemo", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "no_chat_template"
    assert [seen[tuple(p)] for p in prompts] == want
    assert server.engine.tokens_total == 40


def test_cli_serve_errors(artifact, tmp_path, capsys):
    from uniql import cli

    assert cli.main(["serve", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["serve", str(artifact), "--rate", "0.1", "--min-rate", "0.2"]) == 2
    assert "--min-rate 0.2 is above --rate 0.1" in capsys.readouterr().err
    assert cli.main(["serve", str(artifact), "--rate", "0.9"]) == 2
    assert "outside [0, 0.35]" in capsys.readouterr().err
    assert cli.main(["serve", str(artifact), "--port", "70000"]) == 2


def test_adaptive_server_sheds_under_an_unmeetable_latency_target(artifact, tmp_path):
    """`uniql serve --adaptive`: the controller runs between decode steps; with a time-per-token target no rate
    can meet, it climbs to --max-rate (logged with its reason), responses report the rates they were decoded at,
    and every token still equals lone decoding at the rate it was decoded at (switches only between steps)."""
    log = tmp_path / "decisions.jsonl"
    server = build_server(artifact, rate=0.0, max_batch=4, drain_timeout=2,
                          adaptive={"tpot_ms": 1e-6, "max_rate": 0.3, "dwell_up_s": 0.0, "tpot_window": 1,
                                    "log_path": log})
    r = Running(server)
    try:
        c = r.client()
        out = c.completions.create(model="tiny", prompt=_prompt(4), max_tokens=24, temperature=0)
        rates = out.model_extra["rates"]
        assert rates[0] == 0.0 and rates[-1] == 0.3 and rates == sorted(rates)
        assert out.model_extra["rate"] == 0.3 and _metric(r.url, "uniql_rate") == 0.3
        assert _metric(r.url, "uniql_adaptive") == 1 and _metric(r.url, "uniql_adaptive_switches_total") >= 1
        recs = [json.loads(line) for line in log.read_text().splitlines()]
        assert any(x.get("event") == "rate" and x["to"] > x["from"] and "latency" in json.dumps(x) for x in recs)
        # an operator's choice still wins for the moment (the controller restarts from it)
        assert httpx.post(r.url + "/admin/rate", json={"rate": 0.1}).json()["rate"] == 0.1
    finally:
        r.stop()


def test_cli_serve_adaptive_options_need_adaptive(artifact, capsys):
    from uniql import cli

    assert cli.main(["serve", str(artifact), "--tpot-ms", "50"]) == 2
    assert "need --adaptive" in capsys.readouterr().err
