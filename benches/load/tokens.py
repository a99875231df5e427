#!/usr/bin/env python3
"""Viewer tokens for the `token` test of run.sh (benches/load): N distinct HS256 JWTs, one a line, as the relay
accepts them in access.mode = "token" (src/access.rs). Standard library only.

  tokens.py [-n 1000] [--secret sim-secret] [--ttl 3600] [--call livestream:bench] > tokens.txt

Claims: {"user_id": "viewer-NNNN", "iat": now, "exp": now + TTL, "call_cids": [CALL]} (--call "" leaves out
call_cids). The secret defaults to the simulated Stream API's secret, which the relay uses when
access.token_secret is unset.
"""
import argparse, base64, hashlib, hmac, json, time


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims, secret):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--secret", default="sim-secret")
    ap.add_argument("--ttl", type=int, default=3600, help="seconds until exp")
    ap.add_argument("--call", default="livestream:bench", help='call_cids claim ("" = none)')
    a = ap.parse_args()
    now = int(time.time())
    for i in range(a.n):
        claims = {"user_id": f"viewer-{i:04d}", "iat": now, "exp": now + a.ttl}
        if a.call:
            claims["call_cids"] = [a.call]
        print(jwt(claims, a.secret))


if __name__ == "__main__":
    main()
