"""Drives the gateway's OpenAI-compatible front with the official `openai` package.

Usage: openai_client.py BASE_URL API_KEY. Prints one JSON object describing what it saw.
"""

import json
import sys

import openai
from openai import OpenAI

base_url, api_key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=30)
messages = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]
seen = {}


def reasoning_of(delta):
    extra = getattr(delta, "model_extra", None) or {}
    return getattr(delta, "reasoning_content", None) or extra.get("reasoning_content")


text, reasoning, finish, usage = "", "", None, None
stream = client.chat.completions.create(
    model="gpt", messages=messages, stream=True, stream_options={"include_usage": True}
)
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        text += choice.delta.content or ""
        reasoning += reasoning_of(choice.delta) or ""
        finish = choice.finish_reason or finish
seen["stream"] = {"text": text, "reasoning": reasoning, "finish": finish, "usage": usage}

plain = client.chat.completions.create(model="gpt", messages=messages, max_tokens=3)
seen["plain"] = {
    "text": plain.choices[0].message.content,
    "finish": plain.choices[0].finish_reason,
    "usage": plain.usage.model_dump(),
}

try:
    client.chat.completions.create(model="nope", messages=messages)
    seen["unknown_model"] = "no error"
except openai.NotFoundError as e:
    seen["unknown_model"] = {"status": e.status_code, "code": e.code}

try:
    for _ in client.chat.completions.create(model="broken", messages=messages, stream=True):
        pass
    seen["midstream"] = "no error"
except openai.APIError as e:
    seen["midstream"] = {"message": e.message}

seen["models"] = sorted(m.id for m in client.models.list())
print(json.dumps(seen))
