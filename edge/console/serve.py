"""The console under uvicorn, with the lane screen's caps on connections (`edge.screen.server`).

uvicorn alone takes every connection and keeps one that never sends a request for ever: a client
(or a scan of the network) holding connections by the hundred used up the server's file handles
and staff could not load a page. Here, as on the screen, connections over the caps (in all, and
from one address) are answered 503 at once, never read as a request, and a connection that sends
no whole request within CLIENT_TIMEOUT_S (its headers, then its body) is closed, so one client
cannot keep the slots it took.
The local TLS proxy's address is counted in all only: its clients are the whole staff, and the
proxy caps them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from edge import config as config_mod
from edge.netcaps import BUSY, ConnectionCaps

log = logging.getLogger(__name__)
# A connection that sends no whole request (headers) for this long is closed (the screen's).
CLIENT_TIMEOUT_S = 30.0
REFUSED_DRAIN_S = 1.0  # a refused client's request is read (and dropped) this long, then closed
PROXY = "127.0.0.1"  # the local TLS proxy: trusted for X-Forwarded-For, never capped per address


def capped_protocol(caps: ConnectionCaps) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, admitting connections through `caps`."""

    class Capped(H11Protocol):
        _host: str | None = None  # set when admitted: the slot to give back
        _refusing = False
        _wait: asyncio.TimerHandle | None = None
        _waited_for: object = None  # the request cycle current when the wait began
        _body_wait: asyncio.TimerHandle | None = None
        _body_of: object = None  # the request cycle whose body is being waited for

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if not caps.take(host):
                self._refuse(transport)
                return
            self._host = host
            super().connection_made(transport)
            self._await_request()

        def _refuse(self, transport: asyncio.Transport) -> None:
            """503 without reading the request (it may never come), then close once the client
            has closed or after REFUSED_DRAIN_S: closing on unread bytes would reset the 503."""
            self._refusing = True
            self.transport = transport
            transport.write(BUSY)
            with contextlib.suppress(OSError):  # gone already (reset): nothing more to send
                if not transport.is_closing() and transport.can_write_eof():
                    transport.write_eof()
            self._wait = self.loop.call_later(REFUSED_DRAIN_S, transport.abort)

        def _await_request(self) -> None:
            """Close the connection if no new request has come in CLIENT_TIMEOUT_S."""
            if self._wait is not None:
                self._wait.cancel()
            self._waited_for = self.cycle
            self._wait = self.loop.call_later(CLIENT_TIMEOUT_S, self._no_request)

        def _no_request(self) -> None:
            if self.cycle is self._waited_for and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refusing:
                return
            super().data_received(data)
            c = self.cycle
            if c is not None and c is not self._body_of and getattr(c, "more_body", False):
                # headers in, body to come: the whole body within CLIENT_TIMEOUT_S as well
                self._body_of = c
                if self._body_wait is not None:
                    self._body_wait.cancel()
                self._body_wait = self.loop.call_later(CLIENT_TIMEOUT_S, self._no_body, c)

        def _no_body(self, c: object) -> None:
            waiting = self.cycle is c and getattr(c, "more_body", False)
            if waiting and not self.transport.is_closing():
                log.warning("console connection closed: request body not sent in time")
                self.transport.close()

        def eof_received(self) -> bool | None:  # type: ignore[override]
            if self._refusing:
                self.transport.close()
                return None
            return super().eof_received()

        def on_response_complete(self) -> None:
            self._await_request()  # before: a pipelined request may start in the call below
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            for wait in (self._wait, self._body_wait):
                if wait is not None:
                    wait.cancel()
            if self._refusing:
                return
            if self._host is not None:
                caps.give_back(self._host)
                self._host = None
            super().connection_lost(exc)

    return Capped


def server_config(app: Callable[..., Any], cfg: config_mod.Config, host: str, port: int):
    """The uvicorn config `edge-gate console` serves the app with."""
    # the web stack (the console extra, absent on a lane) loads only for `console`
    import uvicorn

    c = cfg.console
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=capped_protocol(
            ConnectionCaps(
                c.max_connections,
                c.max_per_address,
                "console",
                "staff pages answer again once it stops",
                log,
                exempt=PROXY,
            )
        ),
        proxy_headers=True,  # the client address behind a local TLS proxy (rate limits)
        forwarded_allow_ips=PROXY,
        access_log=False,  # paths and searches can name people: not in the journal
        log_level="info",
        timeout_graceful_shutdown=3,
    )
