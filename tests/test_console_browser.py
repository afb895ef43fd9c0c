"""The staff console and the lane screen in real Chromium (Debian's, driven by Playwright), on a
park of two lanes and the office sharing a real Mosquitto, as the fleet tests run it.

Screenshots of each page go to $EDGE_SCREENSHOTS (docs/screenshots when regenerating the docs).
"""

from __future__ import annotations

import re
import time

import pytest

from edge import config as config_mod
from edge import tickets as tk
from edge.console.app import build_app
from edge.lab.broker import Mosquitto

from .console_harness import (
    PASSWORD,
    USERS,
    Served,
    Syncs,
    add_users,
    chromium,
    gate_running,
    login,
    make_park,
    need_browser,
    need_mosquitto,
    run_clip_at_lane,
    scan_at_lane,
    shot,
    wait_for,
    y4m_from_clip,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, fixtures):
    """Broker, park, syncs, the console, and one Chromium with the Hamilton clip as its camera."""
    need_browser()
    need_mosquitto()
    root = tmp_path_factory.mktemp("park")
    y4m = y4m_from_clip(fixtures / "video" / "short_hamilton_clip.mp4", root / "camera.y4m")
    with Mosquitto(root / "mosquitto", users=USERS) as broker:
        park = make_park(root, broker.url)
        add_users(park.office_cfg)
        syncs = Syncs(park).start()
        try:
            with Served(build_app(park.office_cfg)) as console, chromium(y4m) as browser:
                yield park, console, browser, root
        finally:
            syncs.stop()


def _page(browser, lang: str = "en-US"):
    ctx = browser.new_context(locale=lang, viewport={"width": 1280, "height": 860})
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())
    return page


def _lanes_up(console, page) -> None:
    def both():
        page.goto(console.url + "/lanes")
        return page.locator("#lanes tr[data-lane][data-state='ok']").count() == 2

    wait_for(both, 60, "both lanes on the lanes page")


# --- login, roles, CSRF ----------------------------------------------------------------------


def test_login_wrong_password_and_rate_limit(world, tmp_path):
    """Wrong password refused; after 5 failures the user and the address are locked out."""
    park, _, browser, root = world
    cfg = park.office_cfg  # a console of its own: its limiter starts empty
    with Served(build_app(cfg)) as console:
        page = _page(browser)
        login(page, console.url, "sam")
        assert page.url.endswith("/lanes")
        assert page.locator("#me").inner_text().startswith("sam")
        page = _page(browser)
        login(page, console.url, "rita", "not her password")
        assert page.locator("#login-error").inner_text() == "Wrong user name or password"
        shot(page, "login", tmp_path)
        for _ in range(4):
            login(page, console.url, "rita", "still wrong")
        login(page, console.url, "rita", PASSWORD)  # right password, but locked
        assert "Too many failed logins" in page.locator("#login-error").inner_text()
        assert "/login" in page.url
        login(page, console.url, "stu", PASSWORD)  # the address is locked too
        assert "Too many failed logins" in page.locator("#login-error").inner_text()
        r = page.request.get(console.url + "/lanes", max_redirects=0)
        assert r.status == 303  # no session was issued


def test_steward_cannot_forget_or_revoke(world, tmp_path):
    park, console, browser, _ = world
    page = _page(browser)
    login(page, console.url, "stu")
    assert page.locator("#nav-lanes").count() == 1
    assert page.locator("#nav-people").count() == 0
    assert page.locator("#nav-audit").count() == 0
    page.goto(console.url + "/tickets")
    assert page.locator("#verify").count() == 1  # a steward checks tickets ...
    assert page.locator("#revoke").count() == 0  # ... and has no revoke button
    csrf = page.locator("body").get_attribute("data-csrf")
    for path, form in (
        ("/tickets/revoke", {"ids": "T-STEWARD"}),
        ("/people/P-0000/forget", {"reason": "deletion_request"}),
    ):
        r = page.request.post(console.url + path, form={**form, "csrf": csrf})
        assert r.status == 403, path
    r = page.goto(console.url + "/people")
    assert r.status == 403
    assert "Your role may not do this" in page.locator("#refused").inner_text()
    revoked = park.office.dir / "revoked.txt"
    assert "T-STEWARD" not in tk.load_revocations(revoked)


def test_post_without_csrf_token_is_refused(world):
    park, console, browser, _ = world
    page = _page(browser)
    login(page, console.url, "sam")
    for form in ({"ids": "T-NOCSRF"}, {"ids": "T-NOCSRF", "csrf": "forged-token"}):
        r = page.request.post(console.url + "/tickets/revoke", form=form)
        assert r.status == 403
        assert "CSRF" in r.text()
    assert "T-NOCSRF" not in tk.load_revocations(park.office.dir / "revoked.txt")
    page.goto(console.url + "/tickets")  # the same action with the page's token works
    page.fill("#revoke-ids", "T-CSRF-OK")
    page.click("#revoke")
    assert "Revoked 1 ticket(s)" in page.locator("#message").inner_text()
    assert "T-CSRF-OK" in tk.load_revocations(park.office.dir / "revoked.txt")


# --- a supervisor opens a lane once -----------------------------------------------------------


def test_supervisor_opens_a_lane_once_and_a_steward_cannot(world, tmp_path):
    from edge.gate.audit import AuditLog
    from edge.gate.versions import config_version, model_versions

    park, console, browser, _ = world
    cfg = park.cfg(1)
    with gate_running(cfg) as (gate, events):
        page = _page(browser)
        login(page, console.url, "sam")
        row = page.locator("#lanes tr[data-lane='lane1']")

        def lane1_reports() -> bool:  # its heartbeat carries what the gate runs
            page.goto(console.url + "/lanes")
            return row.get_attribute("data-state") == "ok" and (
                row.locator("td.config").inner_text() == config_version(cfg)
            )

        wait_for(lane1_reports, 60, "lane1's models and config version on the lanes page")
        models = row.locator("td.models").inner_text()
        for name, sha in model_versions(cfg, True).items():
            assert f"{name} {sha}" in models
        shot(page, "lanes", tmp_path)
        row.locator("a.override").click()
        page.fill("#override-reason", "wheelchair user, ticket seen")
        shot(page, "override", tmp_path)
        with page.expect_navigation():
            page.click("#override")
        assert page.locator("#override-sent").inner_text().startswith("Override O-")
        page.locator("#override-outcome[data-state='grant']").wait_for(timeout=60_000)
        assert page.locator("#override-outcome").inner_text() == "The lane opened."
        shot(page, "override-done", tmp_path)
        assert gate.relay.pulses == 1
        oid = events[0]["override"]
    assert [(e["decision"], e["via"]) for e in events] == [("grant", "override")]
    with AuditLog(park.lanes[0].dir / "audit.db") as a:
        (lane_rec,) = [r for r in a.records("decision") if r.subject == oid]
    assert (lane_rec.decision, lane_rec.via) == ("grant", "override")
    assert lane_rec.detail == "by sam: wheelchair user, ticket seen"
    with AuditLog(park.office.dir / "audit.db") as a:
        (office_rec,) = [r for r in a.records("override") if r.subject == oid]
    assert office_rec.detail == "by sam: lane1: wheelchair user, ticket seen"
    page.goto(console.url + "/decisions?lane=lane1&decision=grant")
    assert "override" in page.locator("#decisions", has_text=oid).inner_text()
    # a steward: no button, and the route refuses even a well-formed form
    stu = _page(browser)
    login(stu, console.url, "stu")
    assert stu.locator("#lanes a.override").count() == 0
    assert stu.goto(console.url + "/lanes/lane1/override").status == 403
    csrf = stu.locator("body").get_attribute("data-csrf")
    r = stu.request.post(
        console.url + "/lanes/lane1/override", form={"reason": "let me in", "csrf": csrf}
    )
    assert r.status == 403
    with AuditLog(park.office.dir / "audit.db") as a:
        assert [r.subject for r in a.records("override")] == [oid]  # nothing new sent
    # lane2's gate is not running: past the validity the page says the lane did not open
    short = config_mod.override(park.office_cfg, console={"override_valid_s": 1.0})
    with Served(build_app(short)) as other:
        login(page, other.url, "sam")
        page.goto(other.url + "/lanes/lane2/override")
        page.fill("#override-reason", "nobody at lane2")
        with page.expect_navigation():
            page.click("#override")
        page.locator("#override-outcome[data-state='unanswered']").wait_for(timeout=60_000)
        assert "did not open" in page.locator("#override-outcome").inner_text()


# --- the park day ------------------------------------------------------------------------------


def test_enroll_at_the_kiosk_from_the_camera_then_granted_at_lane_2(world, fixtures, tmp_path):
    park, console, browser, _ = world
    page = _page(browser)
    login(page, console.url, "sam")
    _lanes_up(console, page)
    page.goto(console.url + "/enroll")
    assert page.locator("#consent-version").inner_text() == "2026-01"
    assert "face template" in page.locator("#notice-en").inner_text()
    page.check("#consent")
    page.fill("#name", "Lin-Manuel Miranda")
    page.fill("#pass-ref", "SEASON-1")
    page.click("#start-camera")
    wait_for(
        lambda: int(page.locator("#fb-templates").inner_text() or 0) >= 3,
        180,
        "three usable faces from the camera",
    )
    assert page.locator("#fb-faces").inner_text() == "1"
    assert float(page.locator("#fb-size").inner_text()) > 48
    shot(page, "enroll", tmp_path)
    with page.expect_navigation():
        page.click("#publish")
    pid = page.locator("#pid").inner_text()
    assert re.fullmatch(r"P-[0-9a-f]+", pid), pid
    wait_for(
        lambda: page.locator("#acks").inner_text().strip() == "enrolled on 2 of 2 lanes",
        90,
        "acks from both lanes counted on the page",
    )
    shot(page, "person", tmp_path)
    events = run_clip_at_lane(park.cfg(2), fixtures / "video" / "short_hamilton_clip.mp4")
    grants = [e for e in events if e["decision"] == "grant"]
    assert grants, events[:5]
    assert all(e["via"] == "face" and e["person"] == pid for e in grants)
    page.goto(console.url + "/people?q=miranda")
    assert page.locator(f"#people a:text('{pid}')").count() == 1
    shot(page, "people", tmp_path)


def test_decisions_page_updates_when_a_lane_refuses_a_used_ticket(world, tmp_path):
    park, console, browser, _ = world
    page = _page(browser)
    login(page, console.url, "stu")
    page.goto(console.url + "/decisions")
    text = park.ticket("T-TWICE")
    assert scan_at_lane(park.cfg(1), text)["decision"] == "grant"
    row1 = page.locator("#decisions tr[data-lane='lane1']", has_text="T-TWICE")
    row1.first.wait_for(timeout=30_000)
    from edge.tickets.ledger import Ledger

    def heard() -> bool:
        led = Ledger(park.lanes[1].dir / "ledger.db")
        try:
            return led.used("T-TWICE") == 1
        finally:
            led.close()

    wait_for(heard, 30, "lane2 hears lane1's redemption")
    ev = scan_at_lane(park.cfg(2), text)
    assert (ev["decision"], ev["reason"]) == ("deny", "already_used")
    row = page.locator("#decisions tr[data-lane='lane2'][data-reason='already_used']")
    row.first.wait_for(timeout=30_000)  # arrives live: no reload
    assert "T-TWICE" in row.first.inner_text()
    shot(page, "decisions", tmp_path)
    page.goto(console.url + "/tickets")
    page.fill("#code", text)
    page.click("#verify")
    assert page.locator("#result-ticket").inner_text() == "T-TWICE"
    assert page.locator("#usage tr").count() == 2  # granted at lane1, refused at lane2
    shot(page, "tickets", tmp_path)


def _office_person(park) -> str:
    import numpy as np

    from edge.fleet.office import publish_enrollment
    from edge.gallery.crypto import load_key
    from edge.gallery.store import Consent, Gallery

    d = park.office.dir
    with Gallery(d / "gallery.db", load_key(d / "gallery.key")) as g:
        emb = np.random.default_rng(7).normal(size=(3, 128)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        pid = g.add_person("Ada Park", Consent("2026-01"), list(emb), "test_model", "1")
    publish_enrollment(park.office_cfg, park.priv, d / "gallery.db", d / "gallery.key", pid)
    return pid


def _lane_has(park, i: int, pid: str) -> bool:
    from edge.errors import GalleryError
    from edge.gallery.crypto import load_key
    from edge.gallery.store import Gallery

    d = park.lanes[i - 1].dir
    try:
        with Gallery(d / "gallery.db", load_key(d / "gallery.key"), create=False) as g:
            return any(p.id == pid for p in g.people())
    except GalleryError:
        return False


def test_forget_through_the_console_removes_the_person_on_every_lane(world, tmp_path):
    park, console, browser, _ = world
    pid = _office_person(park)
    for i in (1, 2):
        wait_for(lambda i=i: _lane_has(park, i, pid), 60, f"enrolled at lane{i}")
    page = _page(browser)
    login(page, console.url, "sam")
    page.goto(console.url + f"/people/{pid}")
    assert page.locator("#person-name").inner_text() == "Ada Park"
    with page.expect_navigation():
        page.click("#forget")  # the confirm dialog is accepted
    assert page.locator("#forgotten-msg").count() == 1
    wait_for(
        lambda: page.locator("#acks").inner_text().strip() == "forgotten on 2 of 2 lanes",
        60,
        "deletion acks from both lanes",
    )
    assert page.locator("#proof .ack").all_inner_texts() == ["✔", "✔"]
    for i in (1, 2):
        assert not _lane_has(park, i, pid)
    shot(page, "forget", tmp_path)
    page.goto(console.url + "/audit")
    body = page.locator("#audit").inner_text()
    assert "by sam" in body and "deletion" in body
    page.click("#verify-chain")
    assert page.locator("#chain").inner_text().startswith("Chain intact")
    shot(page, "audit", tmp_path)


def test_reveal_is_audited_and_chinese_pages(world, tmp_path):
    import numpy as np

    from edge.gallery.crypto import load_key
    from edge.gallery.store import Consent, Gallery
    from edge.gate.audit import AuditLog, AuditRecord

    park, console, browser, _ = world
    d = park.office.dir
    with Gallery(d / "gallery.db", load_key(d / "gallery.key")) as g:
        emb = np.random.default_rng(9).normal(size=(3, 128)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        pid = g.add_person("Grace Hopper", Consent("2026-01"), list(emb), "test_model", "1")
    page = _page(browser, "zh-CN")
    login(page, console.url, "li")
    assert page.locator("#nav-decisions").inner_text() == "通行记录"
    page.goto(console.url + "/decisions?lane=lane1&decision=grant")
    with AuditLog(park.lanes[0].dir / "audit.db") as a:  # a face grant, as lane1's gate writes it
        a.record(AuditRecord(time.time(), "lane1", "decision", "grant", "face", pid, 0.81, "ok"))
    button = page.locator(f"button.reveal[data-person='{pid}']")
    button.wait_for(timeout=30_000)
    assert "Grace Hopper" not in page.locator("#decisions").inner_text()  # pseudonymous
    row = page.locator("#decisions tr", has_text=pid).first.inner_text()
    assert "人脸" in row and "通过" in row and "face" not in row, row  # codes in her language
    button.click()
    page.locator("strong.revealed").wait_for(timeout=10_000)
    assert page.locator("strong.revealed").inner_text().strip() == "Grace Hopper"
    with AuditLog(d / "audit.db") as a:
        reveals = [r for r in a.records("reveal") if r.subject == pid]
    assert len(reveals) == 1
    assert reveals[0].detail.startswith("by li")
    page.goto(console.url + "/users")
    assert page.locator("#refused").inner_text() == "您的角色无权执行此操作"
    page.goto(console.url + "/enroll")
    assert NOTICE_ZH_START in page.locator("#notice-zh").inner_text()
    page.goto(console.url + "/decisions")
    shot(page, "decisions-zh", tmp_path)
    stu = _page(browser)
    login(stu, console.url, "stu")
    stu.goto(console.url + "/decisions?lane=lane1&decision=grant")
    stu.locator("#decisions tr", has_text=pid).first.wait_for(timeout=10_000)
    assert stu.locator("button.reveal").count() == 0  # a steward cannot reveal


NOTICE_ZH_START = "我们仅保存人脸模板"


# --- the lane screen ------------------------------------------------------------------------


def test_lane_screen_shows_grant_refusal_and_step_back_in_both_languages(world, tmp_path):
    from edge.gate.notice_socket import SocketSink
    from edge.screen.server import Screen

    park, _, browser, _ = world
    cfg = park.cfg(1)
    with Screen(cfg) as screen:
        page = _page(browser)
        page.goto(screen.url)
        page.locator("body.idle[data-live='1']").wait_for()

        def lines() -> dict[str, str]:
            return {
                p.get_attribute("data-lang"): p.inner_text() for p in page.locator("#lines p").all()
            }

        def shown(notice: str) -> dict[str, str]:
            page.locator(f"body[data-notice='{notice}']").wait_for(timeout=15_000)
            return lines()

        text = park.ticket("T-SCREEN")
        assert scan_at_lane(cfg, text)["decision"] == "grant"  # the gate's own notice
        assert shown("welcome") == {"zh-CN": "欢迎光临，请通行", "en": "Welcome, please pass"}
        assert page.locator("body").get_attribute("class") == "grant"
        shot(page, "screen-welcome", tmp_path)
        assert scan_at_lane(cfg, text)["reason"] == "already_used"
        assert shown("ticket_used") == {
            "zh-CN": "门票已使用 — 请联系工作人员",
            "en": "Ticket already used — please see staff",
        }
        assert page.locator("body").get_attribute("class") == "deny"
        shot(page, "screen-ticket-used", tmp_path)
        sink = SocketSink(cfg.resolve(cfg.screen.socket))
        sink.send({"v": 1, "t": time.time(), "lane": "lane1", "notice": "step_back",
              "reason": "too_close", "decision": None, "name": "Ada Park"})  # fmt: skip
        assert shown("step_back") == {"zh-CN": "请稍微后退", "en": "Step back a little"}
        assert page.locator("#name").inner_text() == ""  # names stay off unless turned on
        shot(page, "screen-step-back", tmp_path)
        page.locator("body.idle").wait_for(timeout=15_000)


def test_lane_screen_in_one_language_with_names_turned_on(world, tmp_path):
    from edge.gate.notice_socket import SocketSink
    from edge.screen.server import Screen

    park, _, browser, root = world
    cfg = config_mod.override(
        park.cfg(2),
        screen={"languages": ("en",), "show_names": True, "socket": str(root / "one.sock")},
    )
    with Screen(cfg) as screen:
        page = _page(browser)
        page.goto(screen.url)
        page.locator("body.idle[data-live='1']").wait_for()
        SocketSink(root / "one.sock").send(
            {
                "v": 1,
                "t": time.time(),
                "lane": "lane2",
                "notice": "welcome",
                "reason": "ok",
                "decision": "grant",
                "name": "Ada",
            }  # fmt: skip
        )
        page.locator("body[data-notice='welcome']").wait_for(timeout=15_000)
        assert page.locator("#lines p").all_inner_texts() == ["Welcome, please pass"]
        assert page.locator("#name").inner_text() == "Hello, Ada"


def test_lane_screen_page_reconnects_after_the_screen_refused_its_stream(world, tmp_path):
    """Before: a stream answered 503 (the screen's connection caps) was given up by the browser
    for good: the kiosk page stayed up, deaf to every later notice."""
    from edge.gate.notice_socket import SocketSink
    from edge.screen.server import MAX_PER_ADDRESS, Screen

    park, _, browser, root = world
    cfg = config_mod.override(park.cfg(2), screen={"socket": str(root / "busy.sock")})
    with Screen(cfg) as screen:
        page = _page(browser)
        page.goto(screen.url)
        page.locator("body.idle[data-live='1']").wait_for()
        screen.httpd.caps.max_per_address = 0  # every new connection is refused 503
        screen.stop.set()  # the open stream ends; the browser's own retry meets the 503
        page.locator("body[data-live='0']").wait_for(timeout=15_000)
        end = time.monotonic() + 30
        while screen.httpd.caps.refused == 0:
            assert time.monotonic() < end, "the page never came back for its stream"
            time.sleep(0.1)
        screen.stop.clear()
        screen.httpd.caps.max_per_address = MAX_PER_ADDRESS  # the caps as shipped
        page.locator("body[data-live='1']").wait_for(timeout=15_000)
        SocketSink(root / "busy.sock").send({"v": 1, "t": time.time(), "lane": "lane2",
              "notice": "welcome", "reason": "ok", "decision": "grant", "name": None})  # fmt: skip
        page.locator("body[data-notice='welcome']").wait_for(timeout=15_000)
