#!/usr/bin/env python3
"""The official Anthropic Python SDK against a running maas gateway, unchanged.

The identity tokens given are exchanged for maas access tokens first
(seed 002's POST /maas-api/v1/tokens); the SDK then sends those as its API
key (`x-api-key`).

    python3 scripts/anthropic_sdk.py --base-url http://127.0.0.1:8080 \
        --free-token dev-free-token --premium-token dev-premium-token

Checks: a message, streaming with `messages.stream` (text and the final
message's usage), a system prompt and a tool definition (translated for the
OpenAI-compatible simulator), `count_tokens`, and the SDK's typed errors for
401, 403, 404, 400 and 429. Exits non-zero on the first failure. The SDK's
retries are off so a 429 is seen, not retried.
"""
import argparse

import anthropic
from anthropic import Anthropic

from sdk_common import check, maas_token


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--free-token", required=True)
    p.add_argument("--premium-token", required=True)
    a = p.parse_args()
    base = a.base_url.rstrip("/")
    premium = Anthropic(base_url=base, api_key=maas_token(base, a.premium_token), max_retries=0)
    free = Anthropic(base_url=base, api_key=maas_token(base, a.free_token), max_retries=0)
    msgs = [{"role": "user", "content": "Hello, how are you?"}]

    m = premium.messages.create(model="simulator", max_tokens=6, messages=msgs,
                                system="Be brief.")
    check(m.type == "message" and m.content[0].type == "text" and m.content[0].text
          and m.usage.output_tokens == 6 and m.usage.input_tokens > 0
          and m.stop_reason == "max_tokens",
          f"messages.create: {m.usage}")

    with premium.messages.stream(model="simulator", max_tokens=5, messages=msgs) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    check(text and final.usage.output_tokens == 5 and final.content[0].text == text,
          f"messages.stream: {text!r}, {final.usage}")

    tools = [{"name": "get_weather", "description": "The weather in a city",
              "input_schema": {"type": "object",
                               "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}]
    m = premium.messages.create(model="simulator", max_tokens=3, messages=msgs, tools=tools)
    check(m.usage.output_tokens == 3, "a tool definition is translated")

    n = premium.messages.count_tokens(model="simulator", messages=msgs)
    check(n.input_tokens > 0, f"count_tokens: {n.input_tokens}")

    try:
        Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
            model="simulator", max_tokens=2, messages=msgs)
        check(False, "401 raised")
    except anthropic.AuthenticationError as e:
        check(e.body["error"]["type"] == "authentication_error", "401 AuthenticationError")
    try:
        free.messages.create(model="simulator-premium", max_tokens=2, messages=msgs)
        check(False, "403 raised")
    except anthropic.PermissionDeniedError:
        check(True, "403 PermissionDeniedError")
    try:
        free.messages.create(model="no-such-model", max_tokens=2, messages=msgs)
        check(False, "404 raised")
    except anthropic.NotFoundError:
        check(True, "404 NotFoundError")
    try:
        free.messages.create(model="simulator", max_tokens=2048, messages=msgs,
                             thinking={"type": "enabled", "budget_tokens": 1024})
        check(False, "400 raised")
    except anthropic.BadRequestError as e:
        check("thinking" in str(e), f"400 BadRequestError naming the field: {e}")
    limited = None
    for _ in range(10):
        try:
            free.messages.create(model="simulator", max_tokens=2, messages=msgs)
        except anthropic.RateLimitError as e:
            limited = e
            break
    check(limited is not None and limited.response.headers.get("retry-after"),
          "429 RateLimitError with Retry-After within the free tier's 5 a minute")
    print("the Anthropic SDK works unchanged")


if __name__ == "__main__":
    main()
