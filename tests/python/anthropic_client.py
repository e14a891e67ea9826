"""Drives the gateway's Anthropic-compatible front (`POST /v1/messages`) with the official
`anthropic` package: streamed and plain answers, a streamed tool call assembled by the SDK, a
tool round trip, an image, errors; every model named on the command line (any provider).

Usage: anthropic_client.py BASE_URL API_KEY MODEL... Prints one JSON object of what it saw.
"""

import json
import os
import sys

import anthropic
from anthropic import Anthropic

base_url, api_key, models = sys.argv[1], sys.argv[2], sys.argv[3:]
client = Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
tools = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
ask = [{"role": "user", "content": "weather in Paris?"}]
seen = {}

for model in models:
    out = {}
    # Streamed text, through the SDK's stream helper.
    with client.messages.stream(
        model=model, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    out["stream"] = {
        "text": text,
        "stop_reason": final.stop_reason,
        "output_tokens": final.usage.output_tokens,
    }

    # A streamed tool call, assembled by the SDK.
    with client.messages.stream(model=model, max_tokens=100, messages=ask, tools=tools) as stream:
        for _ in stream:
            pass
        call_message = stream.get_final_message()
    call = next(b for b in call_message.content if b.type == "tool_use")
    out["tool_call"] = {"stop_reason": call_message.stop_reason, "name": call.name, "input": call.input}

    # The round trip: the assistant's tool_use, then the tool_result.
    answer = client.messages.create(
        model=model,
        max_tokens=100,
        tools=tools,
        messages=ask
        + [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in call_message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
        ],
    )
    out["round_trip"] = {"text": answer.content[0].text, "stop_reason": answer.stop_reason}

    # An image block.
    image = client.messages.create(
        model=model,
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                ],
            }
        ],
    )
    out["image"] = image.content[0].text

    # With extended thinking, a tool round trip sends the signed thinking block back unchanged
    # (Anthropic refuses the second turn without it); THINKING_MODELS names the models to try.
    if model in os.environ.get("THINKING_MODELS", "").split(","):
        thinking = {"type": "enabled", "budget_tokens": 1024}
        with client.messages.stream(
            model=model, max_tokens=2000, messages=ask, tools=tools, thinking=thinking
        ) as stream:
            for _ in stream:
                pass
            call_message = stream.get_final_message()
        think = next(b for b in call_message.content if b.type == "thinking")
        call = next(b for b in call_message.content if b.type == "tool_use")
        answer = client.messages.create(
            model=model,
            max_tokens=2000,
            tools=tools,
            thinking=thinking,
            messages=ask
            + [
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in call_message.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
            ],
        )
        out["thinking_round_trip"] = {
            "blocks": [b.type for b in call_message.content],
            "signature": think.signature,
            "answer_blocks": [b.type for b in answer.content],
            "answer_signature": next(b.signature for b in answer.content if b.type == "thinking"),
            "stop_reason": answer.stop_reason,
        }
    seen[model] = out

# Errors, in Anthropic's shape.
try:
    Anthropic(base_url=base_url, api_key="agw_wrong", max_retries=0).messages.create(
        model=models[0], max_tokens=10, messages=ask
    )
    seen["bad_key"] = "no error"
except anthropic.AuthenticationError as e:
    seen["bad_key"] = {"status": e.status_code, "type": e.body["error"]["type"]}

try:
    client.messages.create(model="nope", max_tokens=10, messages=ask)
    seen["unknown_model"] = "no error"
except anthropic.NotFoundError as e:
    seen["unknown_model"] = {"status": e.status_code, "type": e.body["error"]["type"]}

try:
    client.messages.create(
        model=models[0],
        max_tokens=10,
        messages=ask,
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )
    seen["server_tool"] = "no error"
except anthropic.BadRequestError as e:
    seen["server_tool"] = {"status": e.status_code, "message": e.body["error"]["message"]}

# A bearer token works too (auth_token sends Authorization: Bearer).
bearer = Anthropic(base_url=base_url, auth_token=api_key, max_retries=0).messages.create(
    model=models[0], max_tokens=100, messages=[{"role": "user", "content": "hello"}]
)
seen["bearer"] = bearer.stop_reason
print(json.dumps(seen))
