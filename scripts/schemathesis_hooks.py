"""Schemathesis hooks for scripts/schemathesis.sh.

The MaaS user API answers errors as `application/vnd.goa.error` (Goa's
content type), which is JSON: deserialize it so that schemathesis validates
those bodies against the `GoaError` schema instead of skipping them.
"""

import json

import schemathesis


@schemathesis.deserializer("application/vnd.goa.error")
def goa_error(ctx, response):
    return json.loads(response.content)
