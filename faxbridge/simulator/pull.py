"""The simulator's Fax2WSPull: `POST /faxin/rest/v1/topics/{topic}` hands out locked
batches of inbound faxes, acknowledges the ids of the previous batch and names the
next and exit URLs; `GET /faxin/rest/v1/files/{name}` serves a fax document.
Behaviour from the Retarus pages Fax2WSPull and Polling API, as summarised in
docs/retarus-wire.md §1.2 and §3. The faxes themselves arrive through /_sim/inbound.
"""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faxbridge.basic_auth import basic_ok
from faxbridge.simulator.state import sim_state

BASE = "/faxin/rest/v1"


def guard(request: Request) -> Response | None:
    """401 unless Basic auth is `<customer number>:<pull password>`."""
    state = sim_state(request)
    header = request.headers.get("authorization", "")
    try:
        user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        user = ""
    if user != state.customer_number or not basic_ok(header, user, state.pull_password):
        return Response(status_code=401)
    return None


async def topic(request: Request) -> Response:
    err = guard(request)
    if err:
        return err
    state = sim_state(request)
    name = request.path_params["topic"]
    q = request.query_params
    try:
        fetch = int(q.get("fetch", "10"))
        lock = float(q.get("timeout", state.lock_seconds))
        assert fetch >= 0
    except (ValueError, AssertionError):
        return Response(status_code=400)
    faxes = state.faxes.setdefault(name, [])
    # ids: comma-separated, URL-encoded (%2C decodes to ',' here) — docs/retarus-wire.md §3
    ack = {i for i in q.get("ids", "").split(",") if i}
    for fax in faxes:
        if fax.fax_id in ack:
            fax.acked = True
    now = time.time()
    batch = [f for f in faxes if not f.acked and f.locked_until <= now][:fetch]
    for f in batch:
        f.locked_until = now + lock
        f.offered += 1
    base = str(request.base_url).rstrip("/") + BASE
    ids = ",".join(f.fax_id for f in batch)
    url = f"{base}/topics/{name}?"
    # meta: the page documents only `next` and `exit` ("information about the request"
    # is not itemised), so nothing else is put there.
    meta = {"next": url + urlencode({"fetch": fetch or 10, "ids": ids}),
            "exit": url + urlencode({"fetch": 0, "ids": ids})}
    # documents[].url ends in /files/<id>.<extension> (GET /files/{id}.{extension}):
    # one document per format of the fax (see control.inbound).
    results = [{"id": f.fax_id, **f.metadata,
                "documents": [{"url": f"{base}/files/{n}"} for n, _, _ in f.files]}
               for f in batch]
    return JSONResponse({"meta": meta, "results": results})


async def file(request: Request) -> Response:
    err = guard(request)
    if err:
        return err
    name = request.path_params["name"]
    for faxes in sim_state(request).faxes.values():
        for fax in faxes:
            for fname, data, ctype in fax.files:
                if fname == name:
                    return Response(data, media_type=ctype)
    return Response(status_code=404)


ROUTES = [
    Route(BASE + "/topics/{topic}", topic, methods=["POST"]),
    Route(BASE + "/files/{name}", file, methods=["GET"]),
]
