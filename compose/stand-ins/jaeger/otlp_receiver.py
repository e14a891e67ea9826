"""OTLP/HTTP trace receiver with two calls of Jaeger's query API: the stand-in for Jaeger in
scripts/test-compose. Standard library only: the protobuf of ExportTraceServiceRequest is walked
by hand (only the fields below are read).

    POST :4318/v1/traces                  OTLP, application/x-protobuf or application/json, gzip or not
    GET  :16686/api/services              {"data": [service names]}
    GET  :16686/api/traces?service=NAME   {"data": [{"traceID", "spans": [{"traceID", "spanID",
                                           "operationName", "references"}], "processes"}]}
"""

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.Lock()
# trace id (hex) -> {"service": name, "spans": {span id: span}}
TRACES = {}
MAX_TRACES = 10_000


def fields(buf):
    """Yields (field number, wire type, value) of one protobuf message."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            length, i = varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def service_name(resource):
    for number, _, attribute in fields(resource):
        if number != 1:  # Resource.attributes
            continue
        key = value = None
        for n, _, v in fields(attribute):
            if n == 1:
                key = v.decode()
            elif n == 2:  # AnyValue
                for m, _, s in fields(v):
                    if m == 1:  # string_value
                        value = s.decode()
        if key == "service.name":
            return value
    return None


def spans_from_protobuf(body):
    for number, _, resource_spans in fields(body):
        if number != 1:
            continue
        service, scope_spans = None, []
        for n, _, v in fields(resource_spans):
            if n == 1:
                service = service_name(v)
            elif n == 2:
                scope_spans.append(v)
        for scope in scope_spans:
            for n, _, span in fields(scope):
                if n != 2:
                    continue
                s = {"parent": ""}
                for m, _, v in fields(span):
                    if m == 1:
                        s["trace"] = v.hex()
                    elif m == 2:
                        s["span"] = v.hex()
                    elif m == 4:
                        s["parent"] = v.hex()
                    elif m == 5:
                        s["name"] = v.decode()
                yield service, s


def spans_from_json(body):
    for resource_spans in json.loads(body).get("resourceSpans", []):
        service = None
        for attribute in resource_spans.get("resource", {}).get("attributes", []):
            if attribute.get("key") == "service.name":
                service = attribute.get("value", {}).get("stringValue")
        for scope in resource_spans.get("scopeSpans", []):
            for span in scope.get("spans", []):
                yield service, {
                    "trace": span.get("traceId", "").lower(),
                    "span": span.get("spanId", "").lower(),
                    "parent": span.get("parentSpanId", "").lower(),
                    "name": span.get("name", ""),
                }


def jaeger_trace(trace_id, trace):
    spans = [
        {
            "traceID": trace_id,
            "spanID": s["span"],
            "operationName": s.get("name", ""),
            "references": [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": s["parent"]}]
            if s["parent"]
            else [],
            "processID": "p1",
        }
        for s in trace["spans"].values()
    ]
    return {"traceID": trace_id, "spans": spans, "processes": {"p1": {"serviceName": trace["service"]}}}


class Collector(BaseHTTPRequestHandler):
    def do_POST(self):
        if urlparse(self.path).path != "/v1/traces":
            return self.answer(404, {"error": "only /v1/traces"})
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            if "json" in self.headers.get("Content-Type", ""):
                spans = list(spans_from_json(body))
            else:
                spans = list(spans_from_protobuf(body))
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            return self.answer(400, {"error": f"bad OTLP request: {e}"})
        with LOCK:
            for service, span in spans:
                if "trace" not in span or "span" not in span:
                    continue
                if span["trace"] not in TRACES and len(TRACES) >= MAX_TRACES:
                    continue
                trace = TRACES.setdefault(span["trace"], {"service": service, "spans": {}})
                trace["spans"][span["span"]] = span
        print(f"received {len(spans)} spans", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        with LOCK:
            if url.path == "/api/services":
                names = sorted({t["service"] for t in TRACES.values() if t["service"]})
                return self.answer(200, {"data": names})
            if url.path == "/api/traces":
                service = query.get("service", [None])[0]
                limit = int(query.get("limit", ["100"])[0])
                found = [
                    jaeger_trace(trace_id, t)
                    for trace_id, t in TRACES.items()
                    if service is None or t["service"] == service
                ]
                return self.answer(200, {"data": found[-limit:]})
            if url.path.startswith("/api/traces/"):
                trace_id = url.path.rsplit("/", 1)[1].lower()
                if trace_id in TRACES:
                    return self.answer(200, {"data": [jaeger_trace(trace_id, TRACES[trace_id])]})
                return self.answer(404, {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]})
        self.answer(404, {"error": "unknown path"})

    def answer(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    servers = [ThreadingHTTPServer(("0.0.0.0", port), Collector) for port in (4318, 16686)]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("OTLP receiver (Jaeger stand-in) on :4318, query API on :16686", flush=True)
    servers[0].serve_forever()
