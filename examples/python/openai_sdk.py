"""The official `openai` package pointed at ai-gateway: any model the gateway serves, streamed.

    GATEWAY_URL=http://127.0.0.1:8080 GATEWAY_API_KEY=agw_... python3 openai_sdk.py "Hello" [model]
"""

import os
import sys

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080") + "/v1",
    api_key=os.environ["GATEWAY_API_KEY"],
)
content = sys.argv[1] if len(sys.argv) > 1 else "Hello"
model = sys.argv[2] if len(sys.argv) > 2 else "mock"

print("models:", ", ".join(m.id for m in client.models.list()))
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": content}],
    stream=True,
    stream_options={"include_usage": True},
)
text, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            text.append(choice.delta.content)
            print(choice.delta.content, end="", flush=True)
        if choice.finish_reason:
            finish = choice.finish_reason
print()
print(f"answer: {''.join(text)!r}")
print(f"finish_reason: {finish}, tokens: {usage.total_tokens if usage else '?'}")
