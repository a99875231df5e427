"""Stream's official Python SDK (getstream) as a client of `hls-relay sim`; run by tests/sdk.rs.

It proves wire compatibility, so it only drives the SDK and reports what the SDK made of the answers, as one JSON
object on stdout; tests/sdk.rs holds the assertions. A step that fails reports {"error": "..."} instead of a result.

    STREAM_API_KEY=… STREAM_API_SECRET=… STREAM_BASE_URL=… python3 conformance.py api TYPE ID
    … python3 conformance.py webhooks < deliveries.json    # [{"body_b64": …, "signature": …}, …]

The SDK decodes answers with `infer_missing=True`, which fills a missing required field with None and only warns;
those warnings are errors here, so every field the SDK's models require must be in the simulator's answers.
"""

import base64
import json
import os
import sys
import warnings
from datetime import datetime

import jwt
from getstream import Stream
from getstream.exceptions import StreamApiException

warnings.filterwarnings("error", message=".*non-optional type", category=RuntimeWarning)
# The simulator's secret is short on purpose (sim-secret); PyJWT's advice about key length is noise here.
warnings.filterwarnings("ignore", message="The HMAC key is")


def client():
    return Stream(
        api_key=os.environ["STREAM_API_KEY"],
        api_secret=os.environ["STREAM_API_SECRET"],
        base_url=os.environ["STREAM_BASE_URL"],
        timeout=10.0,
    )


def step(fn):
    try:
        return fn()
    except StreamApiException as e:
        return {
            "error": str(e),
            "status": e.status_code,
            "code": e.code,
            "message": e.message,
            "more_info": e.more_info,
            "details": e.details,
            # None when the SDK could not read the body as its APIError model.
            "api_error_parsed": e.api_error is not None,
        }
    except Exception as e:  # anything the SDK raised is the finding
        return {"error": f"{type(e).__name__}: {e}"}


def timestamp(value):
    """Seconds since the epoch if the SDK gave a datetime, else what it gave, to show the type is wrong."""
    return value.timestamp() if isinstance(value, datetime) else repr(value)


def call_state(call):
    hls = call.egress.hls
    return {
        "cid": call.cid,
        "backstage": call.backstage,
        "broadcasting": call.egress.broadcasting,
        "playlist_url": hls.playlist_url if hls else None,
        "created_at": timestamp(call.created_at),
        "updated_at": timestamp(call.updated_at),
        "created_by_created_at": timestamp(call.created_by.created_at),
        "live_started_at": timestamp(call.session.live_started_at) if call.session else None,
    }


def api(call_type, call_id):
    stream = client()
    call = stream.video.call(call_type, call_id)

    def get():
        data = call.get().data
        state = call_state(data.call)
        state["members"] = len(data.members)
        state["member_created_at"] = timestamp(data.members[0].created_at) if data.members else None
        state["own_capabilities"] = list(data.own_capabilities)
        return state

    return {
        "token_claims": jwt.decode(stream.token, options={"verify_signature": False}),
        "get": step(get),
        "start_hls_broadcasting": step(lambda: {"playlist_url": call.start_hls_broadcasting().data.playlist_url}),
        "stop_hls_broadcasting": step(lambda: {"duration": call.stop_hls_broadcasting().data.duration}),
        "go_live": step(lambda: call_state(call.go_live(start_hls=True).data.call)),
        "stop_live": step(lambda: call_state(call.stop_live(continue_hls=True).data.call)),
        "get_after": step(get),
        "get_unknown": step(lambda: stream.video.call(call_type, "no-such-call").get() and {}),
    }


def webhooks(deliveries):
    stream = client()

    def verify(delivery):
        body = base64.b64decode(delivery["body_b64"])
        event = stream.verify_and_parse_webhook(body, delivery["signature"])
        return {
            "gzip": body[:2] == b"\x1f\x8b",
            "class": type(event).__name__,
            "type": event.type,
            "call_cid": getattr(event, "call_cid", None),
            "created_at": timestamp(event.created_at),
            "hls_playlist_url": getattr(event, "hls_playlist_url", None),
            "call_broadcasting": event.call.egress.broadcasting if getattr(event, "call", None) else None,
        }

    return {"verified": [step(lambda d=d: verify(d)) for d in deliveries]}


def main():
    if sys.argv[1:2] == ["api"] and len(sys.argv) == 4:
        result = api(sys.argv[2], sys.argv[3])
    elif sys.argv[1:] == ["webhooks"]:
        result = webhooks(json.load(sys.stdin))
    else:
        sys.exit("usage: conformance.py api TYPE ID | webhooks < deliveries.json")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
