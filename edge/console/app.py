"""The console's routes: server-rendered pages (Starlette + Jinja2), one small JS file per page.

Every route is declared with the capability it needs (`users.CAN`); `guard` checks, in this
order, the session cookie, the CSRF token on a POST, and the role, so a steward who forges a
form still gets 403. Actions go to `edge.console.actions`, which calls the office library.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from edge import config as config_mod
from edge import tickets as tk
from edge.console import actions
from edge.console.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginLimiter,
    Session,
    Sessions,
    csrf_ok,
    load_secret,
)
from edge.console.feed import DecisionFilter, FleetFeed
from edge.console.i18n import translate
from edge.console.users import LANGS, ROLES, User, UserError, UserStore, allowed
from edge.errors import EdgeGateError
from edge.timeutil import iso, parse_time

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
STREAM_POLL_S = 0.1
KEEPALIVE_S = 15.0
FOLLOW_S = 1.0  # how often a moved office audit log is looked for (and let go)
DECISIONS_SHOWN = 200
AUDIT_PAGE = 100
PEOPLE_SHOWN = 200  # rows of the People page; a search narrows the rest
QUEUED_LIST = "list of {n} queued for the lanes: the office's sync sends it when it runs"
OVERRIDE_GRACE_S = 5.0  # past an override's validity (and this), no answer means it never opened

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'"
)


@dataclass
class Ctx:
    """One request's user, session and language, handed to every guarded route."""

    request: Request
    user: User
    session: Session

    @property
    def lang(self) -> str:
        """The user's language."""
        return self.user.lang


class Console:
    """Everything the routes share: config, users, sessions, limiter, the fleet feed, the office."""

    def __init__(self, cfg: config_mod.Config, feed: FleetFeed | None = None):
        c = cfg.console
        self.cfg = cfg
        self.users = UserStore(cfg.resolve(c.users_db))
        self.sessions = Sessions(load_secret(cfg.resolve(c.secret_file)), c.session_hours * 3600)
        self.limiter = LoginLimiter(c.login_attempts, c.login_window_s)
        self.feed = feed if feed is not None else FleetFeed(cfg)
        self.office = actions.Office(cfg)
        self.kiosk = actions.Kiosk(self.office)
        # override id -> (until, lane): as this console sent it, or as its audit record says
        self.overrides: dict[str, tuple[float, str]] = {}
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["iso"] = lambda t: iso(t) or "-" if t else "-"
        env.filters["ago"] = _ago
        self.templates = Jinja2Templates(env=env)

    # --- responses ------------------------------------------------------------------------------

    def render(self, ctx: Ctx | None, name: str, status: int = 200, **context: Any) -> Response:
        """A page in the user's language (the login page: the browser's)."""
        lang = ctx.lang if ctx else _browser_lang(context.pop("request_for_lang", None))
        user = ctx.user if ctx else None
        context.update(
            _=lambda text, **kw: translate(lang, text, **kw),
            lang=lang,
            user=user,
            can=(lambda cap: user is not None and user.can(cap)),
            csrf=ctx.session.csrf if ctx else context.get("csrf", ""),
            site=self.cfg.fleet.site or self.cfg.gate.id,
            fleet_on=self.feed.enabled,
            fleet_connected=self.feed.connected,
        )
        request = ctx.request if ctx else context.pop("request")
        resp = self.templates.TemplateResponse(request, name, context, status_code=status)
        return resp

    def refuse(self, ctx: Ctx | None, request: Request, status: int, message: str) -> Response:
        """An error page (or JSON for the page scripts) that says what was refused."""
        if _wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        if ctx is None:
            return PlainTextResponse(message, status_code=status)
        return self.render(ctx, "error.html", status=status, message=message)

    # --- the guard ------------------------------------------------------------------------------

    def current(self, request: Request) -> tuple[User, Session] | None:
        """The logged-in user, if the cookie is valid and the account's generation matches."""
        s = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if s is None:
            return None
        user = self.users.get(s.user)
        if user is None or user.disabled or user.generation != s.generation:
            return None
        return user, s

    def guard(self, capability: str | None, handler: Callable[[Ctx], Awaitable[Response]]):
        """An endpoint that needs a session, the CSRF token on POST, and `capability`."""

        async def endpoint(request: Request) -> Response:
            try:
                got = self.current(request)
            except UserError as e:  # the accounts file cannot be read: nobody is let in
                log.error("console users_unreadable path=%s error=%s", request.url.path, e)
                return self.refuse(None, request, 503, str(e))
            if got is None:
                if request.method == "GET" and not _wants_json(request):
                    return RedirectResponse(
                        "/login?next=" + quote(request.url.path), status_code=303
                    )
                return self.refuse(None, request, 401, "not logged in")
            user, session = got
            ctx = Ctx(request, user, session)
            if request.method == "POST":
                sent = request.headers.get("x-csrf-token")
                if sent is None and _is_form(request):
                    try:
                        sent = (await request.form()).get("csrf")
                    except ClientDisconnect:  # gone mid-form: nothing read, nothing done
                        log.info("console client_gone user=%s path=%s", user.name, request.url.path)
                        return Response(status_code=400)
                if not csrf_ok(session, sent if isinstance(sent, str) else None):
                    log.warning("console csrf_refused user=%s path=%s", user.name, request.url.path)
                    return self.refuse(
                        ctx,
                        request,
                        403,
                        translate(user.lang, "CSRF token missing or wrong: reload the page"),
                    )
            if capability is not None and not user.can(capability):
                return self.refuse(
                    ctx, request, 403, translate(user.lang, "Your role may not do this")
                )
            try:
                return await handler(ctx)
            except EdgeGateError as e:
                return self.refuse(ctx, request, status_of(e), str(e))
            except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing done
                log.info("console client_gone user=%s path=%s", user.name, request.url.path)
                return Response(status_code=400)

        return endpoint


class TooLarge(actions.ActionError):
    """A request body over the console's limit, refused before it is read (HTTP 413)."""


def status_of(e: EdgeGateError) -> int:
    """The HTTP status of a refused request: 413 for a body too large, else 400."""
    return 413 if isinstance(e, TooLarge) else 400


async def read_body(request: Request, limit: int, fix: str) -> bytes:
    """The request body, refused as soon as it (or its declared length) passes `limit` bytes,
    so a huge upload is never held in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"{declared} bytes sent; at most {limit} are accepted", fix)
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > limit:
            raise TooLarge(f"more than {limit} bytes sent; at most {limit} are accepted", fix)
    return bytes(out)


def record_id(text: str, what: str) -> int | None:
    """An audit record id from a query string ("" = none); anything but 1 to 2**63-1 in ASCII
    digits is refused (a page past the end is just empty)."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) < 2**63):
        raise actions.ActionError(f"{what} must be an audit record id (a positive whole number)")
    return int(text)


AUDIT_KINDS = ("decision", "enroll", "deletion", "reveal", "revoke", "unrevoke", "override",
               "console", "purge", "door", "system", "ledger", "fleet")  # fmt: skip


def override_outcome(rows: list[dict[str, Any]], until: float | None, now: float) -> dict[str, Any]:
    """What the override page says: the lane's decision (`rows`, newest first, as the feed's
    ticket usage gives them), "waiting", or "unanswered" past the validity. A message delivered
    twice is granted once and then refused as replayed: the grant is what happened at the
    turnstile, so it wins over any refusal. Pure."""
    if not rows:
        late = until is not None and now > until + OVERRIDE_GRACE_S
        return {"state": "unanswered" if late else "waiting"}
    grants = [r for r in rows if r.get("decision") == "grant"]
    r = grants[0] if grants else rows[-1]
    return {"state": r.get("decision"), "reason": r.get("reason"), "t": r.get("t")}


def lane_row(name: str, hb: dict[str, Any], max_offset_s: float) -> dict[str, Any]:
    """One line of the Lanes page from the lane as `fleet status` sees it (its last signed
    heartbeat; `state` ok / stale / gone by its last will / never heard)."""
    off = hb.get("clock_offset")
    models = hb.get("models")
    if isinstance(models, dict):
        models = ", ".join(f"{k} {v}" for k, v in sorted(models.items())) or "ticket-only"
    return {
        "lane": name,
        "state": hb.get("state", "never"),
        "gone": hb.get("gone") or "",
        "online": hb.get("state") == "ok",
        "age_s": hb.get("age_s"),
        "mode": hb.get("mode") or "-",
        "camera": hb.get("camera") or "-",
        "fps": hb.get("fps"),
        "clock_offset": off,
        "clock_off": off is not None and abs(off) > max_offset_s,
        "last_decision_t": hb.get("last_decision_t"),
        "outbox": hb.get("outbox"),
        "models": models or "-",
        "config_version": hb.get("config_version") or "-",
        "pretix": hb.get("pretix") if isinstance(hb.get("pretix"), dict) else None,
        "acl_outdated": hb.get("broker_acl") == "outdated",  # its marks did not come back
        # it holds an older revocation list or roster than the office's: it redeems no ticket
        "behind_office": hb.get("behind_office") is True,
    }


def _head(a) -> dict[str, Any]:
    """The newest record's id (cheap on 100,000 records) and the kinds to filter by."""
    newest = a.page(None, 1)
    return {"head": newest[0][0] if newest else 0, "kinds": AUDIT_KINDS,
            "retention_days": a.retention_days}  # fmt: skip


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0.0, time.time() - float(t))
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "") or request.url.path.startswith(
        "/api/"
    )


def _is_form(request: Request) -> bool:
    ct = request.headers.get("content-type", "")
    return ct.startswith("application/x-www-form-urlencoded") or ct.startswith(
        "multipart/form-data"
    )


def _browser_lang(request: Request | None) -> str:
    if request is not None and "zh" in request.headers.get("accept-language", "")[:5].lower():
        return "zh-CN"
    return "en"


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


def _set_cookie(
    resp: Response, cfg: config_mod.Config, name: str, value: str, max_age: int
) -> None:
    resp.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=cfg.console.secure_cookies,
        path="/",
    )


def build_app(cfg: config_mod.Config, feed: FleetFeed | None = None) -> Starlette:
    """The console as an ASGI app (uvicorn serves it; tests and the benchmark too)."""
    con = Console(cfg, feed)
    g = con.guard

    # --- login ------------------------------------------------------------------------------

    async def login_form(request: Request, error: str = "", status: int = 200) -> Response:
        cookie, token = con.sessions.login_token()
        resp = con.render(
            None,
            "login.html",
            status,
            request=request,
            request_for_lang=request,
            csrf=token,
            error=error,
            next=request.query_params.get("next", "/"),
        )
        _set_cookie(resp, cfg, LOGIN_COOKIE, cookie, 3600)
        return resp

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return await login_form(request)
        form = await request.form()
        name, password = str(form.get("user", "")).strip(), str(form.get("password", ""))
        lang = _browser_lang(request)
        if not con.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            return await login_form(request, translate(lang, "The form expired: try again"), 403)
        addr = _address(request)
        wait = con.limiter.blocked(name, addr)
        if wait > 0:
            log.warning("console login_rate_limited user=%s address=%s", name, addr)
            resp = await login_form(
                request, translate(lang, "Too many failed logins: wait {s} s", s=int(wait) + 1), 429
            )
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        try:
            user = await asyncio.to_thread(con.users.authenticate, name, password)
        except EdgeGateError as e:  # the accounts file locked, unreadable: nobody logs in
            log.error("console login_unavailable error=%s", e)
            return await login_form(request, str(e), 503)
        if user is None:
            con.limiter.failed(name, addr)
            log.warning("console login_failed user=%s address=%s", name, addr)
            return await login_form(request, translate(lang, "Wrong user name or password"), 401)
        con.limiter.succeeded(name)
        try:  # recorded before the session exists: no login without its record
            await asyncio.to_thread(
                con.office.record, user.name, "console", "logged in", reason="login"
            )
        except EdgeGateError as e:
            log.error("console login_unrecorded user=%s error=%s", user.name, e)
            return await login_form(request, str(e), 503)
        cookie, _ = con.sessions.issue(user.name, user.generation)
        nxt = str(form.get("next", "/"))
        resp = RedirectResponse(
            nxt if nxt.startswith("/") and not nxt.startswith("//") else "/", status_code=303
        )
        _set_cookie(resp, cfg, SESSION_COOKIE, cookie, int(cfg.console.session_hours * 3600))
        resp.delete_cookie(LOGIN_COOKIE, path="/")
        return resp

    async def logout(ctx: Ctx) -> Response:
        # every cookie of this user dies, recorded or not: a full audit log keeps nobody in
        await asyncio.to_thread(con.users.end_sessions, ctx.user.name)
        try:
            await asyncio.to_thread(
                con.office.record, ctx.user.name, "console", "logged out", reason="logout"
            )
        except EdgeGateError as e:
            log.error("console logout_unrecorded user=%s error=%s", ctx.user.name, e)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def set_lang(ctx: Ctx) -> Response:
        form = await ctx.request.form()
        lang = str(form.get("lang", ""))  # UserError if unknown
        name = ctx.user.name
        if lang != ctx.lang:  # recorded like every account change (a reload changes nothing)
            await recorded_change(
                ctx,
                f"language of {name} set to {lang}",
                "user",
                lambda then: con.users.set_lang(name, lang, then),
            )
        back = ctx.request.headers.get("referer", "/")
        return RedirectResponse(
            back if "://" not in back or ctx.request.url.netloc in back else "/", status_code=303
        )

    async def home(ctx: Ctx) -> Response:
        return RedirectResponse("/lanes", status_code=303)

    # --- lanes and decisions ----------------------------------------------------------------

    async def lanes(ctx: Ctx) -> Response:
        st = con.feed.status()
        rows = [lane_row(name, hb, cfg.fleet.max_clock_offset_s)
                for name, hb in sorted(st["lanes"].items())]  # fmt: skip
        return con.render(ctx, "lanes.html", lanes=rows)

    def _since(request: Request) -> tuple[float, str]:
        """The `since` filter's time (0: none), and why it could not be read ("" if it was)."""
        since = request.query_params.get("since", "").strip()
        try:
            return (parse_time(since, cfg.gate.zone) if since else 0.0), ""
        except EdgeGateError as e:
            return 0.0, str(e)

    def _filter(request: Request) -> DecisionFilter:
        q = request.query_params
        t, _ = _since(request)  # unreadable: every time is shown, and the page says why
        return DecisionFilter(q.get("lane", ""), q.get("reason", ""), q.get("decision", ""), t)

    async def decisions(ctx: Ctx) -> Response:
        f = _filter(ctx.request)
        rows = con.feed.decisions(f, DECISIONS_SHOWN)
        lanes_known = sorted(con.feed.status()["lanes"])
        return con.render(
            ctx,
            "decisions.html",
            rows=rows,
            f=f,
            lanes=lanes_known,
            reasons=con.feed.reasons(),
            version=con.feed.version,
            query=urlencode({k: v for k, v in ctx.request.query_params.items()}),
            since_text=ctx.request.query_params.get("since", ""),
            since_error=_since(ctx.request)[1],
        )

    row_template = con.templates.env.get_template("_decision_row.html")

    async def decisions_stream(ctx: Ctx) -> Response:
        f = _filter(ctx.request)
        try:
            v = int(ctx.request.query_params.get("after", con.feed.version))
        except ValueError:
            v = con.feed.version
        helpers = {
            "_": lambda text, **kw: translate(ctx.lang, text, **kw),
            "can": ctx.user.can,
        }

        async def events():
            nonlocal v
            last = time.monotonic()
            yield "retry: 1000\n\n"
            while not await ctx.request.is_disconnected():
                v, rows = con.feed.decisions_after(v, f)
                for r in rows:
                    html = row_template.render(r=r, **helpers)
                    yield f"id: {v}\nevent: decision\ndata: {json.dumps(html)}\n\n"
                    last = time.monotonic()
                if time.monotonic() - last > KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    last = time.monotonic()
                await asyncio.sleep(STREAM_POLL_S)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def reveal(ctx: Ctx) -> Response:
        try:
            body = json.loads(await ctx.request.body())
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep too
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("person"), str):
            raise actions.ActionError('send a JSON object {"person": "P-..."}')
        name = await asyncio.to_thread(actions.reveal, con.office, ctx.user.name, body["person"])
        return JSONResponse({"name": name})

    # --- override: open a lane once ---------------------------------------------------------

    async def override_form(ctx: Ctx) -> Response:
        lane = ctx.request.path_params["lane"]
        return con.render(
            ctx, "override.html", lane=lane, oid=None, valid_s=cfg.console.override_valid_s
        )

    async def override_send(ctx: Ctx) -> Response:
        lane = ctx.request.path_params["lane"]
        form = await ctx.request.form()
        oid, sent = await asyncio.to_thread(
            actions.override, con.office, ctx.user.name, lane, str(form.get("reason", ""))
        )
        con.overrides[oid] = (time.time() + cfg.console.override_valid_s, lane)
        q = urlencode({"sent": int(sent)})
        return RedirectResponse(f"/overrides/{quote(oid)}?{q}", status_code=303)

    def _override_sent(oid: str) -> tuple[float, str]:
        """(until, lane) of an override: as this console sent it, else as the office audit
        log's record says (after a restart the page waited for ever); (0, "") for an id this
        office never sent: unanswered at once."""
        if oid not in con.overrides:
            found = actions.sent_override(con.office, oid)
            t, lane = found if found is not None else (-cfg.console.override_valid_s, "")
            con.overrides[oid] = (t + cfg.console.override_valid_s, lane)
        return con.overrides[oid]

    def _override_outcome(oid: str) -> tuple[dict[str, Any], str]:
        # the lane's decision record names the override
        until, lane = _override_sent(oid)
        return override_outcome(con.feed.ticket_usage(oid), until, time.time()), lane

    async def override_page(ctx: Ctx) -> Response:
        oid = ctx.request.path_params["oid"]
        outcome, lane = await asyncio.to_thread(_override_outcome, oid)
        return con.render(
            ctx,
            "override.html",
            lane=lane,
            oid=oid,
            sent=ctx.request.query_params.get("sent") == "1",
            outcome=outcome,
            valid_s=cfg.console.override_valid_s,
        )

    async def override_api(ctx: Ctx) -> Response:
        outcome, _ = await asyncio.to_thread(_override_outcome, ctx.request.path_params["oid"])
        return JSONResponse(outcome)

    # --- enrollment kiosk --------------------------------------------------------------------

    def _notice(lang: str) -> str:
        c = cfg.console
        path = c.notice_file_zh if lang == "zh-CN" and c.notice_file_zh else c.notice_file
        if not path:
            return ""
        try:
            return cfg.resolve(path).read_text(encoding="utf-8")
        except OSError as e:
            return f"(notice file {path}: {e.strerror})"

    async def enroll_page(ctx: Ctx) -> Response:
        cid = con.kiosk.start(ctx.user.name)
        return con.render(
            ctx,
            "enroll.html",
            cid=cid,
            consent_version=cfg.console.consent_version,
            notice_en=_notice("en"),
            notice_zh=_notice("zh-CN"),
            needed=con.kiosk.needed,
            can_publish=con.office.issuer_key is not None and cfg.fleet.enabled,
        )

    async def enroll_frame(ctx: Ctx) -> Response:
        cid = ctx.request.query_params.get("cid", "")
        still = ctx.request.query_params.get("still") == "1"
        con.kiosk.capture(cid, ctx.user.name)  # an unknown capture is refused before any upload
        data = await read_body(ctx.request, actions.MAX_UPLOAD, "send a JPEG or PNG under 8 MB")
        fb = await asyncio.to_thread(con.kiosk.frame, cid, ctx.user.name, data, still)
        return JSONResponse(fb.to_json())

    async def enroll_submit(ctx: Ctx) -> Response:
        form = await ctx.request.form()
        e = actions.Enrollment(
            name=str(form.get("name", "")),
            consent_accepted=form.get("consent") == "yes",
            consent_version=str(form.get("consent_version", "")),
            notice_lang=str(form.get("notice_lang", "en")),
            pass_ref=str(form.get("pass_ref", "")),
            valid_until=str(form.get("valid_until", "")),
            minor=form.get("minor") == "yes",
            guardian=str(form.get("guardian", "")),
        )
        cid = str(form.get("cid", ""))
        pid, n, sent = await asyncio.to_thread(
            actions.enroll, con.office, con.kiosk, cid, ctx.user.name, e
        )
        return RedirectResponse(
            f"/people/{quote(pid)}?enrolled={n}&sent={int(sent)}", status_code=303
        )

    # --- people ------------------------------------------------------------------------------

    async def people(ctx: Ctx) -> Response:
        q = ctx.request.query_params.get("q", "")
        total, rows = await asyncio.to_thread(actions.people, con.office, q, PEOPLE_SHOWN)
        return con.render(ctx, "people.html", rows=rows, q=q, total=total)

    def _fleet_person(pid: str) -> dict[str, Any]:
        st = con.feed.status()
        p = st["people"].get(pid)
        lanes = sorted(st["lanes"])
        if p is None:
            return {"op": None, "lanes_done": [], "lanes": lanes, "k": 0, "n": len(lanes)}
        return {**p, "lanes": lanes, "k": len(p["lanes_done"]), "n": len(lanes)}

    async def person(ctx: Ctx) -> Response:
        pid = ctx.request.path_params["pid"]
        _, rows = await asyncio.to_thread(actions.people, con.office, pid)
        here = next((r for r in rows if r["id"] == pid), None)
        q = ctx.request.query_params
        return con.render(
            ctx,
            "person.html",
            pid=pid,
            person=here,
            fleet=_fleet_person(pid),
            enrolled=q.get("enrolled"),
            sent=q.get("sent"),
            forgotten=q.get("forgotten"),
        )

    async def person_api(ctx: Ctx) -> Response:
        return JSONResponse(_fleet_person(ctx.request.path_params["pid"]))

    async def forget(ctx: Ctx) -> Response:
        pid = ctx.request.path_params["pid"]
        form = await ctx.request.form()
        reason = str(form.get("reason", "deletion_request")) or "deletion_request"
        here, sent = await asyncio.to_thread(actions.forget, con.office, ctx.user.name, pid, reason)
        said = ("here" if here else "none") + (
            "" if sent is None else "-sent" if sent else "-queued"
        )
        return RedirectResponse(f"/people/{quote(pid)}?forgotten={said}", status_code=303)

    # --- tickets -----------------------------------------------------------------------------

    async def tickets(ctx: Ctx, result: dict | None = None, message: str = "") -> Response:
        usage = (
            con.feed.ticket_usage(result["ticket_id"]) if result and result.get("ticket_id") else []
        )
        revoked: list[str] = []
        if ctx.user.can("revoke") and con.office.revocation_list is not None:
            try:
                revoked = sorted(tk.load_revocations(con.office.revocation_list))
            except EdgeGateError:
                revoked = []
        return con.render(
            ctx, "tickets.html", result=result, usage=usage, message=message, revoked=revoked
        )

    async def tickets_page(ctx: Ctx) -> Response:
        return await tickets(ctx)

    async def ticket_verify(ctx: Ctx) -> Response:
        form = await ctx.request.form()
        upload = form.get("image")
        data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
        res = await asyncio.to_thread(
            actions.check_ticket, con.office, str(form.get("code", "")), data
        )
        return await tickets(ctx, result=res)

    def _ids(text: str) -> list[str]:
        ids = [t for t in text.replace(",", " ").split() if t]
        if not ids:
            raise actions.ActionError("no ticket id given", "type one or more ticket ids")
        return ids

    async def ticket_revoke(ctx: Ctx) -> Response:
        form = await ctx.request.form()
        ids = _ids(str(form.get("ids", "")))
        added, n, sent = await asyncio.to_thread(actions.revoke, con.office, ctx.user.name, ids)
        msg = translate(ctx.lang, "Revoked {n} ticket(s)", n=len(added))
        if n is not None:
            said = "list of {n} sent to the lanes" if sent else QUEUED_LIST
            msg += "; " + translate(ctx.lang, said, n=n)
        return await tickets(ctx, message=msg)

    async def ticket_unrevoke(ctx: Ctx) -> Response:
        form = await ctx.request.form()
        removed, sent = await asyncio.to_thread(
            actions.unrevoke, con.office, ctx.user.name, _ids(str(form.get("ids", "")))
        )
        msg = translate(ctx.lang, "Un-revoked {n} ticket(s) at the office", n=len(removed))
        if sent is not None:
            said = "lifted on the lanes" if sent else "lifting queued for the lanes"
            msg += "; " + translate(ctx.lang, said)
        return await tickets(ctx, message=msg)

    # --- audit -------------------------------------------------------------------------------

    async def audit(ctx: Ctx) -> Response:
        q = ctx.request.query_params
        before = record_id(q.get("before", ""), "before")
        kind = q.get("kind") or None

        def read():
            with con.office.audit() as a:
                return a.page(before, AUDIT_PAGE, kind), _head(a)

        rows, summary = await asyncio.to_thread(read)
        return con.render(
            ctx,
            "audit.html",
            rows=rows,
            summary=summary,
            kind=kind or "",
            next_before=rows[-1][0] if len(rows) == AUDIT_PAGE else None,
            report=None,
        )

    async def audit_verify(ctx: Ctx) -> Response:
        def run():
            with con.office.audit() as a:
                return a.verify(), a.page(None, AUDIT_PAGE), _head(a)

        rep, rows, summary = await asyncio.to_thread(run)
        await asyncio.to_thread(  # a locked log holds up this request, never the server's loop
            con.office.record,
            ctx.user.name,
            "console",
            "audit verify: " + ("intact" if rep.ok else "BROKEN"),
            reason="audit_verify",
        )
        return con.render(
            ctx, "audit.html", rows=rows, summary=summary, kind="", next_before=None, report=rep
        )

    async def audit_export(ctx: Ctx) -> Response:
        fmt = ctx.request.path_params["fmt"]
        if fmt not in ("csv", "json", "jsonl"):
            return con.refuse(ctx, ctx.request, 404, f"no export as {fmt!r}: csv or json")
        since_text = ctx.request.query_params.get("since", "")
        since = parse_time(since_text, cfg.gate.zone) if since_text else None
        # opened before the export is recorded: a log that does not open is this page's error,
        # not a download cut off after its headers; a locked log holds up this request only
        a = await asyncio.to_thread(con.office.audit_log)
        try:
            await asyncio.to_thread(
                con.office.record,
                ctx.user.name,
                "console",
                f"audit export {fmt}",
                reason="audit_export",
            )
        except BaseException:
            a.close()
            raise
        keys = (
            "id",
            "time",
            "t",
            "gate",
            "kind",
            "decision",
            "via",
            "subject",
            "score",
            "reason",
            "detail",
            "hash",
        )

        def lines():
            try:
                if fmt == "csv":
                    buf = io.StringIO()
                    w = csv.writer(buf)
                    w.writerow(keys)
                    for rid, r, h in a.rows(since=since):
                        w.writerow([rid, iso(r.t), *asdict(r).values(), h])
                        if buf.tell() > 65536:
                            yield buf.getvalue()
                            buf.seek(0)
                            buf.truncate()
                    yield buf.getvalue()
                else:
                    for rid, r, h in a.rows(since=since):
                        out = {"id": rid, "time": iso(r.t), **asdict(r), "hash": h}
                        yield (
                            json.dumps({k: v for k, v in out.items() if v not in ("", None)}) + "\n"
                        )
            finally:
                a.close()

        media = "text/csv" if fmt == "csv" else "application/x-ndjson"
        ext = "csv" if fmt == "csv" else "jsonl"
        return StreamingResponse(
            lines(),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="audit-{cfg.gate.id}.{ext}"'},
        )

    # --- users (admin) -----------------------------------------------------------------------

    async def users_page(ctx: Ctx, message: str = "", status: int = 200) -> Response:
        return con.render(
            ctx,
            "users.html",
            status=status,
            users=await asyncio.to_thread(con.users.all),
            roles=ROLES,
            langs=LANGS,
            message=message,
        )

    async def users_get(ctx: Ctx) -> Response:
        return await users_page(ctx)

    async def users_add(ctx: Ctx) -> Response:
        form = await ctx.request.form()
        name, role = str(form.get("name", "")).strip(), str(form.get("role", ""))
        password, lang = str(form.get("password", "")), str(form.get("lang", "en"))
        try:
            await recorded_change(
                ctx,
                f"added user {name} as {role}",
                "user",
                lambda then: con.users.add(name, role, password, lang, then),
            )
        except UserError as e:
            return await users_page(ctx, str(e), 400)
        return await users_page(ctx, translate(ctx.lang, "User {name} added", name=name))

    async def users_change(ctx: Ctx) -> Response:
        name = ctx.request.path_params["name"]
        form = await ctx.request.form()
        role = str(form.get("role") or "")
        try:
            if role:
                said, args = "role of {name} set to {role}", {"name": name, "role": role}
                await recorded_change(
                    ctx,
                    said.format(**args),
                    "user",
                    lambda then: con.users.set_role(name, role, then),
                )
            elif form.get("disabled") in ("yes", "no"):
                disabled = form.get("disabled") == "yes"
                said = "locked user {name}" if disabled else "unlocked user {name}"
                args = {"name": name}
                await recorded_change(
                    ctx,
                    said.format(**args),
                    "user",
                    lambda then: con.users.set_disabled(name, disabled, then),
                )
            else:
                raise UserError("nothing to change: send a role, or disabled=yes|no")
        except UserError as e:
            return await users_page(ctx, str(e), 400)
        return await users_page(ctx, translate(ctx.lang, said, **args))  # recorded in English

    async def recorded_change(
        ctx: Ctx, what: str, reason: str, change: Callable[[Callable[[], None]], object]
    ) -> None:
        """An account change and its audit record, all or nothing: the record is written inside
        the change's transaction (it fails: nothing changes); a change whose own commit then
        fails gets a second record saying it was not done."""
        recorded = False

        def then() -> None:
            nonlocal recorded
            con.office.record(ctx.user.name, "console", what, reason=reason)
            recorded = True

        try:
            await asyncio.to_thread(change, then)
        except EdgeGateError as e:
            if recorded:
                log.error("console change_not_committed user=%s error=%s", ctx.user.name, e)
                with contextlib.suppress(EdgeGateError):
                    await asyncio.to_thread(
                        con.office.record,
                        ctx.user.name,
                        "console",
                        f"not done: {what}",
                        reason=reason,
                    )
            raise

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", g(None, logout), methods=["POST"]),
        Route("/me/lang", g(None, set_lang), methods=["POST"]),
        Route("/", g("lanes", home)),
        Route("/lanes", g("lanes", lanes)),
        Route("/lanes/{lane}/override", g("override", override_form)),
        Route("/lanes/{lane}/override", g("override", override_send), methods=["POST"]),
        Route("/overrides/{oid}", g("override", override_page)),
        Route("/api/overrides/{oid}", g("override", override_api)),
        Route("/decisions", g("decisions", decisions)),
        Route("/decisions/stream", g("decisions", decisions_stream)),
        Route("/api/reveal", g("reveal", reveal), methods=["POST"]),
        Route("/enroll", g("enroll", enroll_page)),
        Route("/enroll", g("enroll", enroll_submit), methods=["POST"]),
        Route("/api/enroll/frame", g("enroll", enroll_frame), methods=["POST"]),
        Route("/people", g("people", people)),
        Route("/people/{pid}", g("people", person)),
        Route("/api/people/{pid}", g("people", person_api)),
        Route("/people/{pid}/forget", g("forget", forget), methods=["POST"]),
        Route("/tickets", g("tickets.verify", tickets_page)),
        Route("/tickets/verify", g("tickets.verify", ticket_verify), methods=["POST"]),
        Route("/tickets/revoke", g("revoke", ticket_revoke), methods=["POST"]),
        Route("/tickets/unrevoke", g("revoke", ticket_unrevoke), methods=["POST"]),
        Route("/audit", g("audit", audit)),
        Route("/audit/verify", g("audit", audit_verify), methods=["POST"]),
        Route("/audit/export.{fmt:str}", g("audit", audit_export)),
        Route("/users", g("users", users_get)),
        Route("/users", g("users", users_add), methods=["POST"]),
        Route("/users/{name}", g("users", users_change), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def follow_files() -> None:
        while True:  # a moved audit log is let go within a second (Office.let_go_moved_audit)
            await asyncio.sleep(FOLLOW_S)
            await asyncio.to_thread(con.office.let_go_moved_audit)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        con.feed.start()
        follower = asyncio.create_task(follow_files())
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            con.feed.close()
            con.users.close()
            con.office.close()

    async def client_gone(request: Request, exc: Exception) -> Response:
        """A client that left mid-body (or was closed for not sending it) on any page: nobody
        to answer, nothing done; one line, never a traceback."""
        log.info("console client_gone path=%s", request.url.path)
        return Response(status_code=400)

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={ClientDisconnect: client_gone}
    )
    app.state.console = con
    return SecurityHeaders(app)


class SecurityHeaders:
    """CSP (no inline script), no framing, no sniffing, no referrer leaks: on every response."""

    HEADERS = [
        (b"content-security-policy", CSP.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(self), microphone=(), geolocation=()"),
    ]

    def __init__(self, app):
        self.app = app
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.HEADERS
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def allowed_roles(capability: str) -> list[str]:
    """The roles that may use a capability (for the docs table and tests)."""
    return [r for r in ROLES if allowed(r, capability)]
