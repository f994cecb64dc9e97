"""What the SDK checks (openai_sdk.py, anthropic_sdk.py) share."""
import json
import sys
import urllib.request


def check(cond, what):
    """Prints ok, or the failure and exits 1."""
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def maas_token(base_url, identity_token):
    """Seed 002's first step: an identity token for a maas access token."""
    req = urllib.request.Request(
        base_url.rstrip("/") + "/maas-api/v1/tokens",
        data=json.dumps({"expiration": "15m"}).encode(),
        headers={"Authorization": f"Bearer {identity_token}",
                 "Content-Type": "application/json"},
        method="POST")
    with urllib.request.urlopen(req) as r:
        return json.load(r)["token"]
