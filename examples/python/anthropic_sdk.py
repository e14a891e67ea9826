"""The official `anthropic` package pointed at ai-gateway (its /v1/messages front): any model
the gateway serves, streamed.

    GATEWAY_URL=http://127.0.0.1:8080 GATEWAY_API_KEY=agw_... python3 anthropic_sdk.py "Hello" [model]
"""

import os
import sys

from anthropic import Anthropic

client = Anthropic(
    base_url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
    api_key=os.environ["GATEWAY_API_KEY"],
)
content = sys.argv[1] if len(sys.argv) > 1 else "Hello"
model = sys.argv[2] if len(sys.argv) > 2 else "mock"

with client.messages.stream(
    model=model,
    max_tokens=1024,
    messages=[{"role": "user", "content": content}],
) as stream:
    for piece in stream.text_stream:
        print(piece, end="", flush=True)
    message = stream.get_final_message()
print()
text = "".join(block.text for block in message.content if block.type == "text")
print(f"answer: {text!r}")
print(
    f"stop_reason: {message.stop_reason}, "
    f"tokens: {message.usage.input_tokens + message.usage.output_tokens}"
)
