"""An OpenAI-compatible HTTP server (Starlette + uvicorn) over the continuous-batching Engine.

    POST /v1/completions        prompt -> text (stream: server-sent events, `data: [DONE]` last)
    POST /v1/chat/completions   messages -> assistant message (the model's chat template)
    GET  /v1/models             the one served model
    GET  /health                {"status": "ok"} while the engine runs
    GET  /metrics               Prometheus text: tokens/s, queue depth, KV-cache use, requests

Errors are OpenAI-style JSON bodies {"error": {"message", "type", "param", "code"}} with a 4xx
status for bad requests (400), a bad or missing API key (401), an unknown model or route (404),
a too-large body (413), and 503 when every slot is busy and the waiting queue is full.
Shutdown (Ctrl-C, SIGTERM) stops accepting connections and ends running streams at once with a
final chunk (finish_reason "stop", an OpenAI value, and a top-level "notice" saying the server
shut down) and `data: [DONE]`; requests still arriving get 503.
Model compute runs on the engine's thread, tokenization on a worker thread: the event loop only
moves bytes.
"""
import asyncio
import hmac
import json
import logging
import math
import os
import sys
import threading
import time
import uuid

from .chat import ROLES, ChatTemplate, TemplateBug
from .engine import Engine, QueueFull, SamplingParams

log = logging.getLogger("slmx.serve")

MAX_BODY_BYTES = 8 << 20
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error answered as {"error": {...}} with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 503: "server_overloaded",
             500: "server_error"}

    def __init__(self, status, message, param=None, code=None, type=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or self.TYPES.get(status, "invalid_request_error")

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------ request checks

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _opt(body, name, check, what, default=None):
    """body[name] (None/absent -> default); APIError(400, param=name) unless check(value)."""
    v = body.get(name)
    if v is None:
        return default
    if not check(v):
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(v)[:80]}", param=name,
                       code="invalid_value")
    return v


def _int_in(lo, hi=None):
    return lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi)


def _num_in(lo, hi, lo_open=False):
    return lambda v: _is_num(v) and (v > lo if lo_open else v >= lo) and v <= hi


def _stop_list(body):
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} "
                            "non-empty strings", param="stop", code="invalid_value")
    return stop


class Request:
    """The checked fields of one completion request."""

    def __init__(self, body, chat, model_ids, sampler_options):
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = _opt(body, "model", lambda v: isinstance(v, str), "a string")
        if model is not None and model not in model_ids:
            raise APIError(404, f"the model {model!r} does not exist; this server has "
                                f"{', '.join(repr(m) for m in model_ids)}", param="model",
                           code="model_not_found")
        self.chat = chat
        self.stream = _opt(body, "stream", lambda v: isinstance(v, bool), "a boolean", False)
        so = _opt(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
        self.include_usage = bool(so.get("include_usage", False))
        if _opt(body, "n", _int_in(1), "a positive integer", 1) != 1:
            raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
        mt = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        self.max_tokens = _opt(body, mt, _int_in(1), "an integer >= 1")
        self.max_tokens_param = mt
        temperature = _opt(body, "temperature", _num_in(0.0, 2.0), "a number in [0, 2]", 1.0)
        top_p = _opt(body, "top_p", _num_in(0.0, 1.0), "a number in [0, 1]", 1.0)
        top_k = _opt(body, "top_k", _int_in(0), "an integer >= 0 (0 = off)", 40)
        seed = _opt(body, "seed", _is_int, "an integer")
        extra = {}
        for name in ("presence_penalty", "frequency_penalty"):
            v = _opt(body, name, _num_in(-2.0, 2.0), "a number in [-2, 2]", 0.0)
            if v:
                if name not in sampler_options:
                    raise APIError(400, f"'{name}' is not supported by this server", param=name,
                                   code="unsupported_parameter")
                extra[name] = float(v)
        for name, check, what in (("min_p", _num_in(0.0, 1.0), "a number in [0, 1]"),
                                  ("repeat_penalty", _num_in(0.0, 10.0, lo_open=True), "a number in (0, 10]")):
            v = _opt(body, name, check, what)
            if v is not None:
                if name not in sampler_options:
                    raise APIError(400, f"'{name}' is not supported by this server", param=name,
                                   code="unsupported_parameter")
                extra[name] = float(v)
        if top_p == 0:           # nothing but the most likely token
            top_p, top_k = 1.0, 1
        self.params = SamplingParams(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                     seed=None if seed is None else seed % (1 << 63), extra=extra)
        self.stop = _stop_list(body)
        self.ignore_eos = _opt(body, "ignore_eos", lambda v: isinstance(v, bool), "a boolean", False)
        bias = _opt(body, "logit_bias", lambda v: isinstance(v, dict), "an object {token id: bias}")
        if bias:
            if "logit_bias" not in sampler_options:
                raise APIError(400, "'logit_bias' is not supported by this server", param="logit_bias",
                               code="unsupported_parameter")
            extra["logit_bias"] = bias
        rf = body.get("response_format")
        if rf is not None and not (isinstance(rf, dict) and rf.get("type") == "text"):
            raise APIError(400, "only response_format {'type': 'text'} is supported",
                           param="response_format", code="unsupported_value")
        if chat:
            want = _opt(body, "logprobs", lambda v: isinstance(v, bool), "a boolean", False)
            top = _opt(body, "top_logprobs", _int_in(0, MAX_TOP_LOGPROBS),
                       f"an integer in [0, {MAX_TOP_LOGPROBS}]")
            if top is not None and not want:
                raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            self.logprobs = (top or 0) if want else None
            if body.get("tools") or body.get("functions"):
                raise APIError(400, "tools / function calling are not supported by this server",
                               param="tools", code="unsupported_parameter")
            self.messages = _messages(body)
            self.echo = False
        else:
            self.logprobs = _opt(body, "logprobs", _int_in(0, 5), "an integer in [0, 5]")
            self.echo = _opt(body, "echo", lambda v: isinstance(v, bool), "a boolean", False)
            if body.get("suffix"):
                raise APIError(400, "'suffix' is not supported by this server", param="suffix",
                               code="unsupported_parameter")
            self.prompt = _prompt(body)


def _prompt(body):
    """The prompt: a string or a list of token ids (a list holding one of those is unwrapped)."""
    if "prompt" not in body or body["prompt"] is None:
        raise APIError(400, "'prompt' is required", param="prompt", code="missing_required_parameter")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(_is_int(i) for i in p):
        return p
    if isinstance(p, list) and len(p) > 1 and all(isinstance(i, (str, list)) for i in p):
        raise APIError(400, "only one prompt per request is supported", param="prompt",
                       code="unsupported_value")
    raise APIError(400, "'prompt' must be a string or a non-empty list of token ids", param="prompt",
                   code="invalid_value")


def _messages(body):
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
    out = []
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"'{p}' must be an object", param=p, code="invalid_value")
        role = m.get("role")
        if role not in ROLES:
            raise APIError(400, f"'{p}.role' must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}",
                           param=f"{p}.role", code="invalid_value")
        c = m.get("content")
        if c is None and role == "assistant":
            c = ""
        if isinstance(c, list):
            parts = []
            for j, part in enumerate(c):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise APIError(400, f"'{p}.content[{j}]': only text parts are supported",
                                   param=f"{p}.content", code="unsupported_value")
                parts.append(part["text"])
            c = "".join(parts)
        if not isinstance(c, str):
            raise APIError(400, f"'{p}.content' must be a string or a list of text parts",
                           param=f"{p}.content", code="invalid_value")
        out.append({"role": role, "content": c})
    return out


# ------------------------------------------------------------------------------ event bridge

class _Bridge:
    """Engine events (engine thread) -> an asyncio.Queue on the server's loop.

    With final_only the text is gathered on the engine thread and the loop is woken once."""

    def __init__(self, loop, final_only):
        self.loop = loop
        self.queue = asyncio.Queue()
        self.final_only = final_only
        self.parts, self.logprobs = [], []

    def __call__(self, ev):
        if self.final_only and ev.kind == "text":
            self.parts.append(ev.text)
            self.logprobs.extend(ev.logprobs)
            return
        if self.final_only and ev.kind == "done":
            self.parts.append(ev.text)
            self.logprobs.extend(ev.logprobs)
            ev.text, ev.logprobs = "".join(self.parts), self.logprobs
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:      # the loop is closed (shutdown)
            pass


async def _wait_disconnect(receive):
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


# ------------------------------------------------------------------------------ metrics

class Metrics:
    """Request counters by endpoint and status (the engine keeps token counters)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}
        self.t0 = time.time()

    def count(self, endpoint, status):
        with self.lock:
            k = (endpoint, int(status))
            self.requests[k] = self.requests.get(k, 0) + 1

    def render(self, engine):
        s = engine.snapshot()
        st = s["stats"]
        lines = []

        def metric(name, kind, help, samples):
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, v in samples:
                lab = "{" + ",".join(f'{k}="{v2}"' for k, v2 in labels.items()) + "}" if labels else ""
                lines.append(f"{name}{lab} {v}")

        with self.lock:
            req = sorted(self.requests.items())
        metric("slmx_requests_total", "counter", "HTTP requests by endpoint and status code.",
               [({"endpoint": e, "code": str(c)}, n) for (e, c), n in req])
        metric("slmx_prompt_tokens_total", "counter", "Prompt tokens prefilled.", [({}, st.get("prompt_tokens", 0))])
        metric("slmx_generation_tokens_total", "counter", "Tokens generated.", [({}, st.get("generated_tokens", 0))])
        metric("slmx_generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
               [({}, f"{s['tokens_per_s']:.3f}")])
        metric("slmx_sequences_total", "counter", "Sequences by outcome.",
               [({"outcome": k}, st.get(k, 0)) for k in ("submitted", "completed", "cancelled", "rejected", "errors")])
        metric("slmx_queue_depth", "gauge", "Requests waiting for a slot.", [({}, s["queue_depth"])])
        metric("slmx_slots_busy", "gauge", "Slots (KV caches) holding a sequence.", [({}, s["slots_busy"])])
        metric("slmx_slots_total", "gauge", "Slots (--parallel).", [({}, s["slots_total"])])
        metric("slmx_kv_cache_used_tokens", "gauge", "KV-cache positions filled, all slots.", [({}, s["kv_used_tokens"])])
        metric("slmx_kv_cache_capacity_tokens", "gauge", "KV-cache positions, all slots.",
               [({}, s["kv_capacity_tokens"])])
        metric("slmx_kv_cache_usage_ratio", "gauge", "Filled / total KV-cache positions.",
               [({}, f"{s['kv_used_tokens'] / max(1, s['kv_capacity_tokens']):.6f}")])
        metric("slmx_forward_batches_total", "counter",
               "Batched model forwards of the engine (decode rows and prompt chunks).",
               [({}, st.get("forward_steps", 0))])
        metric("slmx_decode_steps_total", "counter",
               "Batched forwards that decoded at least one sequence (prompt-only forwards not counted).",
               [({}, st.get("decode_steps", 0))])
        metric("slmx_decode_batch_rows_total", "counter",
               "Decoding sequences summed over those forwards (>= slmx_decode_steps_total; "
               "their ratio is the mean decode batch).", [({}, st.get("decode_rows", 0))])
        metric("slmx_decode_batch_size", "gauge", "Sequences (decoding or prefilling) in the last forward.",
               [({}, s["last_batch"])])
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the app

class Service:
    """What the endpoints share: engine, tokenizer, chat template, model ids, API key."""

    def __init__(self, engine, chat_template, model_id, api_key=None, aliases=(), model_meta=None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.chat = chat_template
        self.model_id = model_id
        self.model_ids = [model_id] + [a for a in aliases if a and a != model_id]
        self.api_key = api_key
        self.metrics = Metrics()
        self.created = int(time.time())
        self.model_meta = model_meta or {}
        from ..infer import Sampler
        import inspect
        self.sampler_options = set(inspect.signature(Sampler).parameters)

    def check_key(self, request):
        if not self.api_key:
            return
        h = request.headers.get("authorization", "")
        scheme, _, token = h.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")


async def _read_json(request):
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for c in request.stream():
        size += len(c)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(c)
    raw = b"".join(chunks)
    if not raw.strip():
        raise APIError(400, "the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


def _sse(obj):
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def _piece(tok, i):
    return tok.token_to_piece(i).decode("utf-8", errors="replace")


def _chat_logprobs(tok, lps):
    def entry(i, lp):
        b = tok.token_to_piece(i)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}
    return [dict(entry(t.token_id, t.logprob), top_logprobs=[entry(i, lp) for i, lp in t.top]) for t in lps]


def _completion_logprobs(tok, lps, offset):
    tokens, tlp, top, offs = [], [], [], []
    for t in lps:
        s = _piece(tok, t.token_id)
        tokens.append(s)
        tlp.append(t.logprob)
        top.append({_piece(tok, i): lp for i, lp in t.top})
        offs.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": tlp, "top_logprobs": top, "text_offset": offs}, offset


def create_app(service):
    """The Starlette app serving `service` (a Service)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    S = service
    engine = S.engine

    def error_response(e):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        if e.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    def endpoint(name, auth=True):
        def wrap(fn):
            async def handler(request):
                try:
                    if auth:
                        S.check_key(request)
                    resp = await fn(request)
                except APIError as e:
                    resp = error_response(e)
                except Exception as e:           # a bug: answer 500, keep serving
                    log.exception("%s failed", name)
                    resp = error_response(APIError(500, f"internal error: {type(e).__name__}: {e}"))
                S.metrics.count(name, resp.status_code)
                return resp
            return handler
        return wrap

    async def submit(req, ids, final_only):
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop, final_only)
        room = engine.n_ctx - len(ids)
        if room <= 0:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this model's context holds "
                                f"{engine.n_ctx} (prompt + completion)", param="messages" if req.chat else "prompt",
                           code="context_length_exceeded")
        if req.max_tokens is None:
            max_tokens = room if req.chat else min(16, room)
        else:
            max_tokens = req.max_tokens
            if max_tokens > room:
                raise APIError(400, f"max_tokens {max_tokens} + the prompt's {len(ids)} tokens exceed this "
                                    f"model's context of {engine.n_ctx} tokens (at most {room} tokens can "
                                    "be generated)", param=req.max_tokens_param, code="context_length_exceeded")
        try:
            seq = engine.submit(ids, max_tokens, req.params, stop=req.stop, logprobs=req.logprobs,
                                on_event=bridge, stop_ids=() if req.ignore_eos else None)
        except QueueFull as e:
            raise APIError(503, f"the server is at capacity ({e}); retry later", code="server_busy") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return seq, bridge

    async def tokenize(req):
        tok = S.tokenizer
        if req.chat:
            try:
                ids = await run_in_threadpool(S.chat.encode, req.messages)
            except ValueError as e:         # TemplateRejected: the template refuses these messages
                raise APIError(400, str(e), param="messages") from None
            except TemplateBug as e:        # the server's template is broken: not the client's fault
                raise APIError(500, str(e)) from None
            return ids, ""
        if isinstance(req.prompt, str):
            # a raw prompt is the client's own full text: control tokens in it are parsed (as in
            # llama.cpp's /completion); chat message content never is (ChatTemplate.encode)
            ids = await run_in_threadpool(tok.encode, req.prompt, None, True)
            return ids, req.prompt
        V = tok.vocab_size
        if any(not 0 <= i < V for i in req.prompt):
            raise APIError(400, f"prompt token ids must be in [0, {V})", param="prompt", code="invalid_value")
        return list(req.prompt), (tok.decode(req.prompt) if req.echo else "")

    async def complete(request, chat):
        body = await _read_json(request)
        req = Request(body, chat, S.model_ids, S.sampler_options)
        ids, prompt_text = await tokenize(req)
        if not ids:
            raise APIError(400, "the prompt is empty (no tokens)", param="prompt", code="invalid_value")
        seq, bridge = await submit(req, ids, final_only=not req.stream)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        tok = S.tokenizer

        def usage(ev):
            return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                    "total_tokens": ev.prompt_tokens + ev.completion_tokens}

        if not req.stream:
            disc = asyncio.ensure_future(_wait_disconnect(request.receive))
            get = asyncio.ensure_future(bridge.queue.get())
            try:
                done, _ = await asyncio.wait({get, disc}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    engine.cancel(seq)
                    raise APIError(400, "client disconnected")
                ev = get.result()
            finally:
                disc.cancel()
                get.cancel()
                engine.cancel(seq)            # no-op once finished
            if ev.kind == "error":
                raise APIError(500, f"generation failed: {ev.message}")
            text = (prompt_text if req.echo else "") + ev.text
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "logprobs": ({"content": _chat_logprobs(tok, ev.logprobs)}
                                       if req.logprobs is not None else None),
                          "finish_reason": _wire_finish(ev.finish_reason)}
            else:
                lp = None
                if req.logprobs is not None:
                    lp, _ = _completion_logprobs(tok, ev.logprobs, len(prompt_text) if req.echo else 0)
                choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": _wire_finish(ev.finish_reason)}
            return JSONResponse(dict({"id": rid, "object": obj, "created": created, "model": S.model_id,
                                      "system_fingerprint": "slmx", "choices": [choice], "usage": usage(ev)},
                                     **_notice(ev.finish_reason)))

        async def events():
            head = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": created,
                    "model": S.model_id, "system_fingerprint": "slmx"}
            offset = 0
            try:
                if chat:
                    yield _sse(dict(head, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]))
                elif req.echo and prompt_text:
                    yield _sse(dict(head, choices=[{"index": 0, "text": prompt_text, "logprobs": None,
                                                    "finish_reason": None}]))
                    offset = len(prompt_text)
                while True:
                    ev = await bridge.queue.get()
                    if ev.kind == "error":
                        yield _sse(APIError(500, f"generation failed: {ev.message}").body())
                        break
                    if ev.text or ev.logprobs or ev.kind == "done":
                        fin = _wire_finish(ev.finish_reason) if ev.kind == "done" else None
                        note = _notice(ev.finish_reason) if ev.kind == "done" else {}
                        if chat:
                            lp = ({"content": _chat_logprobs(tok, ev.logprobs)}
                                  if req.logprobs is not None and ev.logprobs else None)
                            if ev.text or lp:
                                yield _sse(dict(head, choices=[{"index": 0, "delta": {"content": ev.text},
                                                                "logprobs": lp, "finish_reason": None}]))
                            if fin:
                                yield _sse(dict(head, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                                                "finish_reason": fin}], **note))
                        else:
                            lp = None
                            if req.logprobs is not None and ev.logprobs:
                                lp, offset = _completion_logprobs(tok, ev.logprobs, offset)
                            else:
                                offset += len(ev.text)
                            yield _sse(dict(head, choices=[{"index": 0, "text": ev.text, "logprobs": lp,
                                                            "finish_reason": fin}], **note))
                    if ev.kind == "done":
                        if req.include_usage:
                            yield _sse(dict(head, choices=[], usage=usage(ev)))
                        break
                yield "data: [DONE]\n\n"
            finally:
                engine.cancel(seq)       # the client went away (or we are done): free the slot now

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @endpoint("/v1/completions")
    async def completions(request):
        return await complete(request, chat=False)

    @endpoint("/v1/chat/completions")
    async def chat_completions(request):
        return await complete(request, chat=True)

    def model_card(mid):
        return {"id": mid, "object": "model", "created": S.created, "owned_by": "slmx", "meta": S.model_meta}

    @endpoint("/v1/models")
    async def models(request):
        return JSONResponse({"object": "list", "data": [model_card(m) for m in S.model_ids]})

    @endpoint("/v1/models/{model}")
    async def model(request):
        mid = request.path_params["model"]
        if mid not in S.model_ids:
            raise APIError(404, f"the model {mid!r} does not exist", param="model", code="model_not_found")
        return JSONResponse(model_card(mid))

    @endpoint("/health", auth=False)
    async def health(request):
        snap = engine.snapshot()
        if not snap["alive"]:
            return JSONResponse({"status": "error", "message": "the engine is not running"}, status_code=503)
        return JSONResponse({"status": "ok", "slots_busy": snap["slots_busy"], "slots_total": snap["slots_total"],
                             "queue_depth": snap["queue_depth"]})

    @endpoint("/metrics")
    async def metrics(request):
        return PlainTextResponse(S.metrics.render(engine), media_type="text/plain; version=0.0.4")

    async def http_error(request, exc):
        msg = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed on "
                                                         f"{request.url.path}"}.get(exc.status_code, exc.detail)
        S.metrics.count("other", exc.status_code)
        return error_response(APIError(exc.status_code, msg))

    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error},
                    lifespan=_asynccontextmanager(lifespan))
    app.state.slmx_service = S          # _Server drains its engine when shutdown begins
    return app


def _asynccontextmanager(fn):
    import contextlib
    return contextlib.asynccontextmanager(fn)


# ------------------------------------------------------------------------------ building and running

def build_service(model, n_ctx=None, parallel=4, max_queue=None, api_key=None, threads=None,
                  chat_template=None, alias=None, prefill_chunk=128, kv_cache_type="f32"):
    """Load a model (path or name, or a loaded LanguageModel) and wrap it in an Engine and a
    Service (nothing started yet). kv_cache_type: the slots' KV-cache format (f32, f16, q8_0, q4_0)."""
    from .. import api
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"--parallel must be an integer >= 1, got {parallel!r}")
    lm = api.load(model, threads=threads, n_ctx=n_ctx) if isinstance(model, (str, os.PathLike)) else model
    make = getattr(lm, "make_cache", None)
    factory = (lambda cfg, n: make(kv_cache_type, n)) if make else None
    engine = Engine(lm.transformer, lm.tokenizer, lm.n_ctx, parallel=parallel,
                    max_queue=4 * parallel if max_queue is None else max_queue, prefill_chunk=prefill_chunk,
                    **({"cache_factory": factory} if factory else {}))
    tmpl = ChatTemplate.for_model(lm.tokenizer, lm.config.arch, lm.path, chat_template)
    name = os.path.basename(os.fspath(lm.path).rstrip(os.sep))
    model_id = alias or (name[:-5] if name.endswith(".gguf") else name)
    aliases = [str(model)] if isinstance(model, str) and not os.path.exists(model) else []
    meta = {"arch": lm.config.arch, "n_ctx": lm.n_ctx, "parallel": parallel, "vocab_size": lm.config.vocab_size,
            "chat_template": tmpl.source, "kv_cache_type": kv_cache_type}
    return Service(engine, tmpl, model_id, api_key=api_key, aliases=aliases, model_meta=meta)


def _wire_finish(reason):
    """The OpenAI finish_reason of the engine's: "abort" (ended by shutdown) is sent as "stop"
    (OpenAI clients know only stop / length / tool_calls / content_filter), with a `notice`."""
    return "stop" if reason == "abort" else reason


def _notice(reason):
    """Top-level fields telling a client its output was cut short by the server's shutdown."""
    return {"notice": "the server is shutting down: the output was cut short"} if reason == "abort" else {}


def _make_server(config):
    """A uvicorn.Server that, when shutdown begins (Ctrl-C, SIGTERM, should_exit), first drains
    the app's engine: running streams end at once with a final chunk (finish_reason "stop" + "notice") and
    `data: [DONE]`, so uvicorn never has to cancel a request task (no traceback, no cut stream)."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            service = getattr(getattr(config.app, "state", None), "slmx_service", None)
            if service is not None:
                service.engine.drain()
            await super().shutdown(sockets=sockets)

    return _Server(config)


class ServerThread:
    """Run the app with uvicorn on a background thread (tests, benchmarks). port 0: a free port."""

    def __init__(self, app, host="127.0.0.1", port=0, log_level="warning"):
        import uvicorn
        self.server = _make_server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                  lifespan="on", timeout_graceful_shutdown=2))
        self.thread = None
        self.host = host
        self.port = None

    def start(self, timeout=30.0):
        self.thread = threading.Thread(target=self.server.run, name="slmx-uvicorn", daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def stop(self):
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def bind_socket(host, port):
    """A TCP socket bound to host:port (port 0: a free one), for uvicorn to listen on. OSError
    with a one-line message naming the address when it cannot be bound (in use, no permission,
    unknown host)."""
    import errno
    import socket
    # the address family as uvicorn picks it: IPv6 for a host with ':', else IPv4 ("localhost": 127.0.0.1)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn: TIME_WAIT is no obstacle
        sock.bind((host, port))
    except socket.gaierror as e:
        sock.close()
        raise OSError(f"--host {host!r}: {e.strerror}") from None
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} is in use (address {host}:{port}); stop what listens there or pick "
                          "another --port") from None
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def exposed_without_key(host, api_key):
    """The start-up warning for a non-loopback `host` with no API key (None when loopback or keyed):
    anyone who can reach the address can then use the model."""
    import ipaddress
    if api_key:
        return None
    h = host.strip("[]")
    if h.lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(h).is_loopback:
            return None
    except ValueError:
        pass                    # a host name other than localhost: may be reachable from elsewhere
    return (f"slmx serve: warning: listening on {host} (not loopback) without an API key: anyone who can "
            "reach it can use the model; set --api-key or $SLMX_API_KEY")


def run(model, host="127.0.0.1", port=8080, parallel=4, n_ctx=None, api_key=None, threads=None,
        max_queue=None, chat_template=None, alias=None, log_level="info", kv_cache_type="f32"):
    """`slmx serve`: load the model and serve it until interrupted. The address is bound first
    (a port in use is an OSError before the model loads); the "... on http://HOST:PORT/v1" line is
    printed once it is bound, with the real port (port 0: a free one)."""
    import uvicorn
    sock = bind_socket(host, port)
    try:
        service = build_service(model, n_ctx=n_ctx, parallel=parallel, max_queue=max_queue, api_key=api_key,
                                threads=threads, chat_template=chat_template, alias=alias,
                                kv_cache_type=kv_cache_type)
        app = create_app(service)
        port = sock.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        print(f"slmx serve: {service.model_id} ({service.model_meta['arch']}, ctx {service.engine.n_ctx} per "
              f"sequence, {parallel} parallel, chat template {service.chat.source}) on "
              f"http://{url_host}:{port}/v1", flush=True)
        warning = exposed_without_key(host, api_key)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        server = _make_server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                             timeout_graceful_shutdown=5))
        server.run(sockets=[sock])
    finally:
        sock.close()
