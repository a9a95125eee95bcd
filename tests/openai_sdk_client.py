"""The official OpenAI Python SDK against triage: a plain completion, a streamed one (with
usage) and a tool call. Usage: openai_sdk_client.py BASE_URL. Prints one line per check and
exits non-zero on the first failure."""

import json
import sys

from openai import OpenAI


def main() -> None:
    base = sys.argv[1]
    client = OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=30)

    # 1. a plain completion, with the x-triage-* headers
    raw = client.chat.completions.with_raw_response.create(
        model="plain",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        temperature=0.2,
        max_tokens=20,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the mock", completion
    assert completion.choices[0].finish_reason == "stop", completion
    assert completion.usage is not None and completion.usage.total_tokens == 18, completion.usage
    assert raw.headers.get("x-triage-provider") == "anthropic-mock", dict(raw.headers)
    assert raw.headers.get("x-triage-attempts") == "1", dict(raw.headers)
    print("plain completion ok")

    # 2. a streamed completion with usage
    stream = client.chat.completions.create(
        model="plain",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "Hello from the mock", text
    assert finish == "stop", finish
    assert usage is not None and usage.completion_tokens == 7, usage
    print("streamed completion ok")

    # 3. a tool call, whole and streamed
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    completion = client.chat.completions.create(model="tools", messages=messages, tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather", call
    assert json.loads(call.function.arguments) == {"city": "Paris"}, call
    assert completion.choices[0].finish_reason == "tool_calls"

    # send the result back: the follow-up must translate the tool call and result
    messages.append(completion.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'})
    follow = client.chat.completions.create(model="tools", messages=messages, tools=tools)
    assert follow.choices[0].message.tool_calls[0].function.name == "get_weather"

    stream = client.chat.completions.create(model="tools", messages=messages[:1], tools=tools, stream=True)
    name, args, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                name += tc.function.name or "" if tc.function else ""
                args += tc.function.arguments or "" if tc.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather", name
    assert json.loads(args) == {"city": "Paris"}, args
    assert finish == "tool_calls", finish
    print("tool call ok")

    # 4. errors come back as OpenAI errors
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except Exception as e:  # openai.NotFoundError
        assert getattr(e, "status_code", None) == 404, e
    else:
        raise AssertionError("an unknown model must fail")
    print("errors ok")


if __name__ == "__main__":
    main()
