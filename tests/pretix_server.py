"""A real pretix (from PyPI, its own virtualenv) on a free loopback port, for the sync tests.

`scripts/pretix-testserver.sh build` makes the virtualenv and a migrated template database once
per pinned version, in a cache outside the repository; each test session copies the template,
creates an organizer, an API token, two events that sign tickets with pretix_sig1, paid orders,
and runs pretix's own server (`runserver --noreload`, so the PID held here is the server). Where
pretix cannot be built the tests skip with the reason; with CI=true they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pretix-testserver.sh"
BUILD_TIMEOUT_S = 1500

SETUP = textwrap.dedent(
    """
    import json, sys
    from datetime import timedelta
    from decimal import Decimal
    import django
    django.setup()
    from django.db import transaction
    from django.utils.timezone import now
    from django_scopes import scopes_disabled
    from pretix.base.models import (
        CheckinList, Device, Event, Item, Order, OrderPosition, Organizer, Team,
    )

    n_orders = int(sys.argv[1])
    out = {"events": {}}
    with scopes_disabled(), transaction.atomic():
        org = Organizer.objects.create(name="Gate Test", slug="gatetest")
        team = Team.objects.create(organizer=org, name="API", all_events=True,
                                   all_event_permissions=True, all_organizer_permissions=True)
        out["token"] = team.tokens.create(name="office").token
        # the lane's token: what README asks for, nothing more (read orders, check in)
        gate_team = Team.objects.create(
            organizer=org, name="Gates", all_events=True,
            limit_event_permissions={"event.orders:read": True, "event.orders:checkin": True})
        out["gate_token"] = gate_team.tokens.create(name="lane").token
        web = org.sales_channels.get(identifier="web")
        for slug, count in (("gatenight", n_orders), ("othernight", 1)):
            ev = Event.objects.create(organizer=org, name=slug, slug=slug, currency="EUR",
                                      date_from=now() + timedelta(days=1), live=True)
            ev.settings.timezone = "Europe/Berlin"
            ev.settings.ticket_secret_generator = "pretix_sig1"
            item = Item.objects.create(event=ev, name="Admission", default_price=Decimal("10"),
                                       admission=True)
            cl = CheckinList.objects.create(event=ev, name="Main gate", all_products=True)
            orders = []
            for i in range(count):
                o = Order.objects.create(
                    event=ev, status=Order.STATUS_PAID, email=f"v{i}@example.org",
                    locale="en", datetime=now(), expires=now() + timedelta(days=10),
                    total=Decimal("10"), sales_channel=web)
                p = OrderPosition.objects.create(order=o, item=item, price=Decimal("10"),
                                                 attendee_name_parts={"full_name": f"V{i}"})
                o.create_transactions()
                orders.append({"code": o.code, "position": p.pk, "secret": p.secret})
            out["events"][slug] = {"list": cl.pk, "item": item.pk, "orders": orders}
            if slug == "gatenight":  # a lane connected as pretixSCAN is: a device of this event
                dev = Device.objects.create(organizer=org, name="Lane 1", all_events=False,
                                            security_profile="pretixscan")
                dev.limit_events.add(ev)
                out["device_init"] = dev.initialization_token
    print("SETUP " + json.dumps(out))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(msg: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + "; CI=true requires a real pretix", pytrace=False)
    pytest.skip(msg)


def pretix_cache() -> Path:
    """The built cache (venv + template db), building it on first use (minutes, once)."""
    r = subprocess.run(["bash", str(SCRIPT), "path"], capture_output=True, text=True)
    if r.returncode != 0:
        b = subprocess.run(
            ["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
        if b.returncode != 0:
            why = "; ".join((b.stderr or b.stdout).strip().splitlines()[-3:])
            _unavailable(f"pretix could not be built ({SCRIPT.name} build): {why}")
        r = subprocess.run(["bash", str(SCRIPT), "path"], capture_output=True, text=True)
    return Path(r.stdout.strip())


@dataclass
class PretixServer:
    """One running pretix: its URL, token and the objects created in it."""

    work: Path
    cache: Path
    port: int = 0
    token: str = ""  # the office's (cancel, block)
    gate_token: str = ""  # the lanes' (read orders, check in)
    device_init: str = ""  # a device's one-time initialisation token (profile pretixscan)
    events: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    organizer: str = "gatetest"

    @property
    def url(self) -> str:
        """The shop's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(
            PRETIX_CONFIG_FILE=str(self.work / "pretix.cfg"),
            DJANGO_SETTINGS_MODULE="pretix.settings",
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env

    def prepare(self, n_orders: int) -> None:
        """Copy the template db, write pretix.cfg, create the objects."""
        self.port = self.port or _free_port()
        data = self.work / "data"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.cache / "template.sqlite3", data / "db.sqlite3")
        (self.work / "pretix.cfg").write_text(
            f"[pretix]\ninstance_name=edge-gate-test\nurl={self.url}\ndatadir={data}\n"
            "currency=EUR\necb_rates=false\n[database]\nbackend=sqlite3\n"
            "[django]\ndebug=false\n[mail]\nfrom=pretix@localhost\n"
        )
        (self.work / "setup.py").write_text(SETUP)
        r = subprocess.run(
            [str(self.cache / "venv/bin/python"), str(self.work / "setup.py"), str(n_orders)],
            cwd=self.work,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("SETUP ")), None)
        if r.returncode != 0 or line is None:
            _unavailable(f"pretix objects could not be created: {r.stderr[-800:]}")
        out = json.loads(line[len("SETUP ") :])
        self.token, self.gate_token, self.events = out["token"], out["gate_token"], out["events"]
        self.device_init = out["device_init"]

    def start(self, wait_s: float = 120.0) -> None:
        """Run pretix's server and wait until its API answers (401 without a token)."""
        log = open(self.work / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [
                str(self.cache / "venv/bin/python"),
                "-m",
                "pretix",
                "runserver",
                f"127.0.0.1:{self.port}",
                "--noreload",
            ],
            cwd=self.work,
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                _unavailable(f"pretix server exited: {self.tail()}")
            try:
                urllib.request.urlopen(self.url + "/api/v1/", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # 401: up
            except OSError:
                time.sleep(0.3)
        self.stop()
        _unavailable(f"pretix server did not answer in {wait_s} s: {self.tail()}")

    def stop(self) -> None:
        """Stop the server (its own PID only)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def tail(self) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return (self.work / "server.log").read_text(errors="replace")[-800:]
        except OSError:
            return ""

    # --- the API, as the office would use it --------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One REST call with the test token."""
        req = urllib.request.Request(
            f"{self.url}/api/v1/organizers/{self.organizer}/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def cancel(self, event: str, code: str) -> None:
        """Cancel an order (pretix revokes its pretix_sig1 secret)."""
        st, body = self.api(
            "POST", f"events/{event}/orders/{code}/mark_canceled/", {"send_email": False}
        )
        assert st == 200, body

    def block(self, event: str, position: int) -> None:
        """Block one ticket (pretix lists its secret in blockedsecrets)."""
        st, body = self.api(
            "POST", f"events/{event}/orderpositions/{position}/add_block/", {"name": "admin"}
        )
        assert st == 200, body

    def checkins(self, event: str, position: int) -> list[dict]:
        """The check-ins pretix holds for one ticket (every list)."""
        st, body = self.api("GET", f"events/{event}/orderpositions/{position}/")
        assert st == 200, body
        return body["checkins"]

    def list_count(self, event: str, list_id: int) -> int:
        """How many check-ins pretix counts on a list."""
        st, body = self.api("GET", f"events/{event}/checkinlists/{list_id}/")
        assert st == 200, body
        return body["checkin_count"]


def gate_toml(server: PretixServer, folder: Path, ledger: Path, token_file: Path, **extra) -> str:
    """A [pretix] section (and the ledger) for a lane of this shop."""
    ev = server.events["gatenight"]
    lines = [
        "[tickets]",
        f'ledger = "{ledger}"',
        "[pretix]",
        f'dir = "{folder}"',
        f'url = "{server.url}"',
        f'organizer = "{server.organizer}"',
        'event = "gatenight"',
        f"checkin_list = {ev['list']}",
        f'token_file = "{token_file}"',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"
