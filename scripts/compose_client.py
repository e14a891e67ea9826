"""The client side of scripts/test-compose: checks a running compose stack through its load
balancer, as a user and an operator would, and prints one line per check.

    python3 scripts/compose_client.py --base http://127.0.0.1:8080 --jaeger http://127.0.0.1:16686 \
        --admin-token TOKEN --container gw-1=CONTAINER_ID --container gw-2=CONTAINER_ID

Needs `websockets` (PyPI) and `openai` (tests/python/requirements.txt). Exits 1 at the first
failed check, naming it.
"""

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request

import openai
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# Generous bounds: they only stop a hung check, the checks never depend on speed.
FRAME_TIMEOUT_S = 60
PASSWORD = "compose-" + secrets.token_hex(8)


class CheckFailed(Exception):
    pass


def check(ok, what):
    if not ok:
        raise CheckFailed(what)


def log(message):
    print(f"[compose-client {time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


class Stack:
    def __init__(self, args):
        self.base = args.base.rstrip("/")
        self.ws_base = "ws" + self.base[len("http") :]
        self.jaeger = args.jaeger.rstrip("/")
        self.admin_token = args.admin_token
        self.containers = dict(c.split("=", 1) for c in args.container)

    def http(self, method, path, body=None, token=None, base=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request((base or self.base) + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=FRAME_TIMEOUT_S) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def docker(self, *args):
        subprocess.run(["docker", *args], check=True, stdout=subprocess.DEVNULL)

    def container_state(self, node):
        """(status, health, started_at) of a node's container."""
        out = subprocess.run(
            ["docker", "inspect", "--format",
             "{{.State.Status}} {{.State.StartedAt}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
             self.containers[node]],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        return out[0], out[2] if len(out) > 2 else "", out[1]

    def started_at(self, node):
        return self.container_state(node)[2]

    def bring_back(self, node, started_before):
        """Starts a node's container again after a test stopped the run that began at
        `started_before`, and waits until healthy. A signal from `docker kill` counts as a manual
        stop, so the restart policy does not bring it back: once that run has exited, the
        container is started here (or, had a policy restarted it, the new run is waited for)."""
        deadline = time.monotonic() + 120
        while True:
            status, _, started = self.container_state(node)
            if status == "exited" or (status == "running" and started != started_before):
                break
            check(time.monotonic() < deadline, f"{node}'s stopped run ended ({status})")
            time.sleep(0.5)
        if status == "exited":
            self.docker("start", self.containers[node])
        while self.container_state(node)[:2] != ("running", "healthy"):
            check(time.monotonic() < deadline,
                  f"{node} healthy again after its restart ({' '.join(self.container_state(node))})")
            time.sleep(1)
        log(f"{node} is back")


class Session:
    """One WebSocket session through the balancer."""

    def __init__(self, ws, welcome):
        self.ws = ws
        self.node = welcome["payload"]["node_id"]
        self.session_id = welcome["payload"]["session_id"]

    @classmethod
    async def open(cls, stack, token, headers=()):
        ws = await connect(
            stack.ws_base + "/chat",
            additional_headers=[("Authorization", f"Bearer {token}"), *headers],
            open_timeout=FRAME_TIMEOUT_S,
            max_size=None,
        )
        welcome = await cls.next_of(ws)
        check(
            welcome["type"] == "system" and welcome["payload"]["event"] == "welcome",
            f"a welcome frame first, not {welcome}",
        )
        return cls(ws, welcome)

    @staticmethod
    async def next_of(ws):
        return json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))

    async def next(self):
        return await self.next_of(self.ws)

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))


class Answer:
    """The frames of one request, checked as they come: seq without gaps or repeats."""

    def __init__(self, request_id, after_seq=-1):
        self.id = request_id
        self.last_seq = after_seq
        self.text = ""
        self.stream_id = None
        self.done = None
        self.error = None

    def take(self, frame):
        """Takes a frame of this request; returns True once the request ended."""
        if frame.get("id") != self.id:
            return False
        payload = frame.get("payload") or {}
        if frame["type"] == "chat":
            check(payload["seq"] == self.last_seq + 1, f"chunk seq {payload['seq']} after {self.last_seq}")
            self.last_seq = payload["seq"]
            self.stream_id = payload.get("stream_id") or self.stream_id
            if payload.get("type") == "text":
                self.text += payload["content"]
            return False
        if frame["type"] == "error":
            self.error = payload
            return "reason" in payload and payload["reason"] == "resume_unavailable"
        if frame["type"] == "done":
            self.done = payload
            self.stream_id = payload.get("stream_id") or self.stream_id
            return True
        return False


async def chat_to_end(session, answer):
    while True:
        if answer.take(await session.next()):
            return answer


def new_user(stack):
    name = "compose-" + secrets.token_hex(4)
    status, body = stack.http("POST", "/register", {"username": name, "password": PASSWORD})
    check(status == 200, f"POST /register answers 200, not {status} {body}")
    status, body = stack.http("POST", "/login", {"username": name, "password": PASSWORD})
    check(status == 200 and body.get("token"), f"POST /login answers a token, not {status} {body}")
    return name, body["token"]


async def websocket_chat(stack, token, trace_id):
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    session = await Session.open(stack, token, [("traceparent", traceparent)])
    await session.send({"type": "chat", "id": "r1", "payload": {"content": "Hello AI", "model": "mock"}})
    answer = await chat_to_end(session, Answer("r1"))
    check(answer.done["finish_reason"] == "stop", f"the answer ends with stop: {answer.done}")
    check(answer.text and answer.last_seq > 0, "the answer has text")
    await session.ws.close()
    return session.node, answer.text


def openai_chat(stack, token):
    status, key = stack.http("POST", "/v1/keys", {"name": "compose"}, token=token)
    check(status in (200, 201) and key.get("key"), f"POST /v1/keys makes a key, not {status} {key}")
    client = openai.OpenAI(base_url=stack.base + "/v1", api_key=key["key"], max_retries=0, timeout=FRAME_TIMEOUT_S)
    models = [m.id for m in client.models.list()]
    check("mock" in models, f"GET /v1/models lists mock: {models}")
    text, finish = "", None
    for chunk in client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "Hello AI"}], stream=True
    ):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    check(text and finish == "stop", f"the OpenAI stream has text and ends with stop ({finish})")
    return text


async def admin_kills_a_session(stack, name, token):
    session = await Session.open(stack, token)
    deadline = time.monotonic() + FRAME_TIMEOUT_S
    while True:
        status, body = stack.http("GET", f"/admin/sessions?user={name}", token=stack.admin_token)
        check(status == 200, f"GET /admin/sessions answers 200, not {status} {body}")
        if any(s["session_id"] == session.session_id for s in body["sessions"]):
            break
        check(time.monotonic() < deadline, f"the session is listed: {body}")
        await asyncio.sleep(0.5)
    status, body = stack.http("GET", f"/admin/sessions?user={name}", token=token)
    check(status == 403, f"a user may not list sessions ({status})")
    status, body = stack.http("DELETE", f"/admin/sessions/{session.session_id}", token=stack.admin_token)
    check(status == 200, f"DELETE /admin/sessions/ID answers 200, not {status} {body}")
    try:
        while True:
            await session.next()
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
        check(code == 1008, f"the killed session closes with 1008, not {code}")
    return session.node


async def start_long_answer(stack, token, request_id):
    """A session with an answer running, some chunks of it received."""
    session = await Session.open(stack, token)
    await session.send({"type": "chat", "id": request_id, "payload": {"content": "Hello AI", "model": "mock"}})
    answer = Answer(request_id)
    while answer.last_seq < 5:
        check(not answer.take(await session.next()), "the answer is still running after 5 chunks")
    return session, answer


async def resume_elsewhere(stack, token, gone_node, answer):
    """Reconnects through the balancer (which now reaches the other node) and resumes."""
    deadline = time.monotonic() + 2 * FRAME_TIMEOUT_S
    while True:
        try:
            session = await Session.open(stack, token)
            break
        except (OSError, asyncio.TimeoutError, ConnectionClosed) as e:
            check(time.monotonic() < deadline, f"reconnecting through the balancer: {e!r}")
            await asyncio.sleep(0.5)
    check(session.node != gone_node, f"the reconnection reached the other node, not {session.node}")
    resumed = Answer("resume-" + answer.id, after_seq=answer.last_seq)
    await session.send(
        {"type": "resume", "id": resumed.id,
         "payload": {"stream_id": answer.stream_id, "after_seq": answer.last_seq}}
    )
    await chat_to_end(session, resumed)
    return session, resumed


async def drained_mid_answer(stack, token):
    session, answer = await start_long_answer(stack, token, "drain")
    node = session.node
    log(f"stopping {node} (SIGTERM: drain) after chunk {answer.last_seq}")
    run = stack.started_at(node)
    stack.docker("kill", "--signal", "TERM", stack.containers[node])
    # Read on until the node says it drains (or closes): what the client library reacts to.
    try:
        while True:
            frame = await session.next()
            if frame["type"] == "system" and frame["payload"].get("event") == "draining":
                break
            check(not answer.take(frame), "the answer did not end before the drain was seen")
    except ConnectionClosed:
        pass
    await session.ws.close()
    got = answer.last_seq
    other, resumed = await resume_elsewhere(stack, token, node, answer)
    check(resumed.done is not None and resumed.done["finish_reason"] == "stop",
          f"the answer drained on {node} (client left after chunk {got}), resumed on {other.node}, "
          f"ends with done/stop; got chunks to {resumed.last_seq}, then {resumed.done} {resumed.error}")
    check("chunks" not in resumed.done or resumed.last_seq == resumed.done["chunks"] - 1,
          f"every chunk arrived: last seq {resumed.last_seq}, done {resumed.done}")
    await other.ws.close()
    stack.bring_back(node, run)
    return node, other.node, got, resumed.last_seq


async def killed_mid_answer(stack, token):
    session, answer = await start_long_answer(stack, token, "kill")
    node = session.node
    log(f"killing {node} (SIGKILL) after chunk {answer.last_seq}")
    run = stack.started_at(node)
    stack.docker("kill", stack.containers[node])
    try:
        while True:
            answer.take(await session.next())
    except ConnectionClosed:
        pass
    check(answer.done is None, "the answer did not finish before the kill")
    got = answer.last_seq
    other, resumed = await resume_elsewhere(stack, token, node, answer)
    # What reached Redis before the kill comes, in order, then the answer is named lost.
    check(resumed.error is not None and resumed.error.get("reason") == "resume_unavailable",
          f"the resume ends with resume_unavailable: {resumed.error} {resumed.done}")
    check(resumed.done is None, "no done for an answer whose node died")
    # The question asked again on the node that lives gets a whole answer.
    await other.send({"type": "chat", "id": "again", "payload": {"content": "Hello AI", "model": "mock"}})
    again = await chat_to_end(other, Answer("again"))
    check(again.done["finish_reason"] == "stop", f"asked again: {again.done}")
    await other.ws.close()
    stack.bring_back(node, run)
    return node, other.node, got, resumed.last_seq


def traces_arrived(stack, trace_id):
    """The trace of the WebSocket chat (our traceparent) reached the collector."""
    deadline = time.monotonic() + FRAME_TIMEOUT_S
    while True:
        status, body = stack.http("GET", f"/api/traces/{trace_id}", base=stack.jaeger)
        if status == 200 and body and body.get("data"):
            spans = body["data"][0]["spans"]
            if spans:
                status, services = stack.http("GET", "/api/services", base=stack.jaeger)
                check("ai-gateway" in (services or {}).get("data", []), f"service ai-gateway: {services}")
                return sorted({s["operationName"] for s in spans})
        check(time.monotonic() < deadline, f"the trace {trace_id} reached the collector ({status} {body})")
        time.sleep(1)


async def main(args):
    stack = Stack(args)
    results = []

    def passed(name, detail):
        results.append(name)
        log(f"ok   {name}: {detail}")
        if args.results:
            with open(args.results, "a") as f:
                f.write(name + "\n")

    status, _ = stack.http("GET", "/healthz")
    check(status == 200, f"GET /healthz through the balancer answers 200, not {status}")
    passed("health", "GET /healthz 200 through nginx")
    name, token = new_user(stack)
    passed("register+login", f"user {name}")
    trace_id = secrets.token_hex(16)
    node, text = await websocket_chat(stack, token, trace_id)
    passed("websocket chat", f"{len(text)} characters from {node}")
    text = openai_chat(stack, token)
    passed("openai front", f"{len(text)} characters streamed with an API key")
    node = await admin_kills_a_session(stack, name, token)
    passed("admin sessions", f"listed and killed a session on {node} (closed 1008)")
    gone, other, got, last = await drained_mid_answer(stack, token)
    passed("drain mid-answer", f"{gone} drained after chunk {got}; resumed on {other} through chunk {last}, done")
    gone, other, got, last = await killed_mid_answer(stack, token)
    passed("kill mid-answer", f"{gone} killed after chunk {got}; resumed on {other} through chunk {last}, "
           "then resume_unavailable; asked again there")
    operations = traces_arrived(stack, trace_id)
    passed("traces", f"trace {trace_id[:8]}… with spans {', '.join(operations[:5])}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="http://127.0.0.1:8080")
    parser.add_argument("--jaeger", default="http://127.0.0.1:16686")
    parser.add_argument("--admin-token", default=os.environ.get("GATEWAY_ADMIN_TOKEN", ""))
    parser.add_argument("--container", action="append", default=[], help="NODE_ID=CONTAINER")
    parser.add_argument("--results", help="a file to append the name of each passed check to")
    args = parser.parse_args()
    try:
        done = asyncio.run(main(args))
    except CheckFailed as e:
        log(f"FAILED: {e}")
        sys.exit(1)
    except Exception as e:  # a timeout, a refused connection, an unexpected answer
        traceback.print_exc()
        log(f"FAILED: {e!r}")
        sys.exit(1)
    log(f"{len(done)} checks passed")
