#!/usr/bin/env python3
"""The official OpenAI Python SDK against a running maas gateway, unchanged.

The identity tokens given are exchanged for maas access tokens first
(seed 002's POST /maas-api/v1/tokens); the SDK then uses those.

    python3 scripts/openai_sdk.py --base-url http://127.0.0.1:8080 \
        --free-token dev-free-token --premium-token dev-premium-token

Checks: model listing, a chat completion, a legacy completion, streaming
(with and without include_usage), embeddings (the SDK asks for base64 by
default and decodes it; floats too), the Responses API (plain and streamed,
translated for the chat-only simulator), the per-model URL of /v1/models, and the
SDK's typed errors for 401, 403, 404 and 429. Exits non-zero on the first
failure. The SDK's retries are off so a 429 is seen, not retried.
"""
import argparse

import openai
from openai import OpenAI

from sdk_common import check, maas_token


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--free-token", required=True)
    p.add_argument("--premium-token", required=True)
    a = p.parse_args()
    v1 = a.base_url.rstrip("/") + "/v1"
    premium_token = maas_token(a.base_url, a.premium_token)
    free_token = maas_token(a.base_url, a.free_token)
    check(premium_token and free_token, "maas access tokens for both users")
    premium = OpenAI(base_url=v1, api_key=premium_token, max_retries=0)
    free = OpenAI(base_url=v1, api_key=free_token, max_retries=0)

    ids = [m.id for m in premium.models.list()]
    check("simulator" in ids and "simulator-premium" in ids, f"models.list: {ids}")
    free_ids = [m.id for m in free.models.list()]
    check("simulator-premium" not in free_ids, f"free tier's models: {free_ids}")

    msgs = [{"role": "user", "content": "Hello, how are you?"}]
    r = premium.chat.completions.create(model="simulator", messages=msgs, max_tokens=10)
    check(r.choices[0].message.content and r.usage.completion_tokens == 10,
          f"chat completion: {r.usage}")
    raw = premium.chat.completions.with_raw_response.create(
        model="simulator", messages=msgs, max_tokens=3)
    check(raw.headers.get("x-ratelimit-remaining-requests") is not None,
          "x-ratelimit headers on the raw response")

    r = premium.completions.create(model="simulator", prompt="Say hi", max_tokens=4)
    check(r.choices[0].text and r.usage.completion_tokens == 4, "completion")

    chunks = list(premium.chat.completions.create(
        model="simulator", messages=msgs, max_tokens=5, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text and all(c.usage is None for c in chunks), f"stream without usage: {text!r}")
    chunks = list(premium.chat.completions.create(
        model="simulator", messages=msgs, max_tokens=5, stream=True,
        stream_options={"include_usage": True}))
    usage = [c.usage for c in chunks if c.usage is not None]
    check(len(usage) == 1 and usage[0].completion_tokens == 5, f"stream usage: {usage}")

    e = premium.embeddings.create(model="simulator", input=["hello", "world"])
    check(len(e.data) == 2 and len(e.data[0].embedding) == 16
          and abs(sum(x * x for x in e.data[0].embedding) - 1.0) < 1e-3
          and e.usage.prompt_tokens == 4,
          f"embeddings (base64, decoded by the SDK): {e.usage}")
    f = premium.embeddings.create(model="simulator", input="hello",
                                  encoding_format="float", dimensions=8)
    check(len(f.data[0].embedding) == 8
          and all(abs(a - b) < 1e-6 for a, b in zip(
              f.data[0].embedding,
              premium.embeddings.create(model="simulator", input="hello",
                                        dimensions=8).data[0].embedding)),
          "embeddings as floats equal the base64 ones")

    resp = premium.responses.create(model="simulator", input="Hello",
                                    instructions="Be brief.", max_output_tokens=6)
    check(resp.output_text and resp.usage.output_tokens == 6,
          f"responses.create: {resp.output_text!r} {resp.usage}")
    events = list(premium.responses.create(model="simulator", input="Hello",
                                           max_output_tokens=4, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    check(deltas and last.type in ("response.completed", "response.incomplete")
          and last.response.usage.output_tokens == 4,
          f"responses stream: {deltas!r}, ends with {last.type}")

    # The per-model URL that /v1/models lists (seed 002's MODEL_URL).
    listed = premium.models.with_raw_response.list().http_response.json()
    url = next(m["url"] for m in listed["data"] if m["id"] == "simulator-premium")
    per_model = OpenAI(base_url=url.rstrip("/") + "/v1", api_key=premium_token, max_retries=0)
    r = per_model.chat.completions.create(model="simulator-premium", messages=msgs, max_tokens=2)
    check(r.usage.completion_tokens == 2, f"per-model URL {url}")

    try:
        OpenAI(base_url=v1, api_key="wrong", max_retries=0).chat.completions.create(
            model="simulator", messages=msgs, max_tokens=2)
        check(False, "401 raised")
    except openai.AuthenticationError as e:
        check(e.code == "invalid_api_key", f"401 AuthenticationError {e.code}")
    try:
        free.chat.completions.create(model="simulator-premium", messages=msgs, max_tokens=2)
        check(False, "403 raised")
    except openai.PermissionDeniedError as e:
        check(e.code == "access_denied", f"403 PermissionDeniedError {e.code}")
    try:
        free.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=2)
        check(False, "404 raised")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found", f"404 NotFoundError {e.code}")
    limited = None
    for _ in range(10):
        try:
            free.chat.completions.create(model="simulator", messages=msgs, max_tokens=2)
        except openai.RateLimitError as e:
            limited = e
            break
    check(limited is not None and limited.code == "rate_limit_exceeded"
          and limited.response.headers.get("retry-after"),
          "429 RateLimitError with Retry-After within the free tier's 5 a minute")
    print("the OpenAI SDK works unchanged")


if __name__ == "__main__":
    main()
