"""Tools, images, structured output, parameters and errors through the gateway's
OpenAI-compatible front, driven by the official `openai` package.

Usage: openai_fidelity.py BASE_URL API_KEY. Prints one JSON object describing what it saw.
"""

import json
import sys

import openai
import pydantic
from openai import OpenAI

base_url, api_key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=30)
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
]
ask = [{"role": "user", "content": "weather in Paris?"}]
seen = {}

# A streamed tool call, assembled by the SDK's stream helper.
with client.chat.completions.stream(model="gpt", messages=ask, tools=tools) as stream:
    for _ in stream:
        pass
    final = stream.get_final_completion()
choice = final.choices[0]
call = choice.message.tool_calls[0]
seen["streamed_call"] = {
    "finish": choice.finish_reason,
    "id": call.id,
    "name": call.function.name,
    "arguments": json.loads(call.function.arguments),
}

# The round trip: the assistant's call, then the tool's result.
answer = client.chat.completions.create(
    model="gpt",
    tools=tools,
    messages=ask
    + [
        choice.message.model_dump(exclude_none=True, exclude={"reasoning_content"}),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ],
)
seen["round_trip"] = {
    "text": answer.choices[0].message.content,
    "finish": answer.choices[0].finish_reason,
}

# An image part (base64).
image = client.chat.completions.create(
    model="gpt",
    messages=[
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ],
)
seen["image"] = image.choices[0].message.content


# Structured output, parsed by the SDK into a pydantic model.
class Person(pydantic.BaseModel):
    name: str
    age: int


parsed = client.chat.completions.parse(
    model="gpt",
    messages=[{"role": "user", "content": "who?"}],
    response_format=Person,
    temperature=0.3,
    top_p=0.9,
    seed=7,
    stop=["END"],
    presence_penalty=0.5,
    frequency_penalty=-0.5,
    user="u-42",
    reasoning_effort="low",
    max_completion_tokens=500,
    logprobs=True,
    extra_body={"custom_field": {"kept": True}},
)
seen["parsed"] = parsed.choices[0].message.parsed.model_dump()

# Errors: a named parameter, a bad key, a body too large.
try:
    client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
    )
    seen["bad_part"] = "no error"
except openai.BadRequestError as e:
    seen["bad_part"] = {"status": e.status_code, "param": e.param, "type": e.type}

try:
    OpenAI(base_url=base_url + "/v1", api_key="agw_wrong", max_retries=0).models.list()
    seen["bad_key"] = "no error"
except openai.AuthenticationError as e:
    seen["bad_key"] = {"status": e.status_code, "code": e.code, "type": e.type}

try:
    client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "x" * (300 * 1024)}]
    )
    seen["too_large"] = "no error"
except openai.APIStatusError as e:
    seen["too_large"] = {"status": e.status_code, "code": e.code}

print(json.dumps(seen))
