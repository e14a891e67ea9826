"""Chats with ai-gateway over its WebSocket protocol (docs/PROTOCOL.md) with the `websockets`
package: connects to /chat with a bearer credential, sends one `chat` request, prints the
answer as it streams, then the `done` frame's finish reason and usage.

    GATEWAY_URL=http://127.0.0.1:8080 GATEWAY_API_KEY=agw_... python3 ws_chat.py "Hello" [model]
"""

import json
import os
import sys

from websockets.sync.client import connect

base = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080")
key = os.environ["GATEWAY_API_KEY"]  # an API key (POST /v1/keys) or a login token
content = sys.argv[1] if len(sys.argv) > 1 else "Hello"
model = sys.argv[2] if len(sys.argv) > 2 else "mock"

url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/chat"
with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
    welcome = json.loads(ws.recv())
    print(f"connected: session {welcome['payload']['session_id']} on {welcome['payload']['node_id']}")
    ws.send(json.dumps({"type": "chat", "id": "r1", "payload": {"content": content, "model": model}}))
    text = []
    while True:
        frame = json.loads(ws.recv())
        if frame.get("id") != "r1":
            continue  # pongs, system frames
        if frame["type"] == "chat" and frame["payload"]["type"] == "text":
            text.append(frame["payload"]["content"])
            print(frame["payload"]["content"], end="", flush=True)
        elif frame["type"] == "error":
            p = frame["payload"]
            print(f"\nerror {p['code']} {p['reason']}: {p['message']}", file=sys.stderr)
        elif frame["type"] == "done":
            p = frame["payload"]
            print()
            print(f"answer: {''.join(text)!r}")
            print(f"finish_reason: {p['finish_reason']}, tokens: {p['usage']['total_tokens']}")
            sys.exit(0 if p["finish_reason"] != "error" else 1)
