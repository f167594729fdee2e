"""The one middleware every request passes, and the one response hook: request id, metrics, the error
shape, and the REST API's rate limit, in that order from the outside in.

They were four middlewares and two hooks; each layer's await and frame cost about as much as its work,
about 50 us a request under load (issue 15). What each step does still lives in its own module
(gateway.logs, gateway.metrics, gateway.http, gateway.api_limits); this only runs them.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway import api_limits, logs, ratelimit
from gateway.http import ApiError, BodyTimeout, Handler, answer_and_close, error_response, http_error_response
from gateway.metrics import METRICS


@web.middleware
async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Not reset afterwards on purpose: the request id's ContextVar lives in this request's own task,
    and aiohttp logs an unhandled exception after the middleware has returned; it should carry the id."""
    request_id = logs.request_id_from(request.headers.get(logs.HEADER))
    request[logs.REQUEST_ID_KEY] = request_id
    logs.REQUEST_ID.set(request_id)
    started = time.perf_counter()
    status = 500  # what aiohttp answers for an exception that gets past this middleware
    plain = True  # a stream's duration is its lifetime, not latency
    try:
        # The REST API's budget and the handler; a refusal is answered here, in the error shape. Inline,
        # not a helper coroutine: every request pays for each frame it is awaited through.
        try:
            if api_limits.is_api(request.path) and not api_limits.spend_now(request):
                await api_limits.spend(request)
            response = await handler(request)
        except BodyTimeout as exc:
            response = await answer_and_close(request, exc)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = http_error_response(exc)
        status = response.status
        plain = isinstance(response, web.Response)
        return response
    except web.HTTPException as exc:  # below 400, passed on: redirects, or a 304
        status = exc.status
        raise
    except asyncio.CancelledError:
        status, plain = 499, False  # the client went away first (nginx's code for it)
        raise
    finally:
        elapsed = time.perf_counter() - started
        request.app[METRICS].requests.observe(logs.route_of(request), request.method, status,
                                              elapsed if plain else None)
        logs.log_request(request, status, elapsed, plain=plain)


async def _stamp(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: every response carries the id and the rate-limit headers, aiohttp's own 500
    page, errors, 304s and streams whose headers the handler sent included."""
    request_id = request.get(logs.REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[logs.HEADER] = request_id
    decision = request.get(api_limits.DECISION)
    if decision is not None:
        response.headers.update(ratelimit.headers(decision))


def setup(app: web.Application) -> None:
    """Install the middleware and the hook once; the modules whose steps they run set up their own state."""
    if front_middleware in app.middlewares:
        return
    app.middlewares.append(front_middleware)
    app.on_response_prepare.append(_stamp)
