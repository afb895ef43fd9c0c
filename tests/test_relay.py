"""The relay through gpiozero's MockFactory: pin history with timings, fail closed, inputs."""

from __future__ import annotations

import time

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import RelayConfig
from edge.errors import RelayError
from edge.gate.relay import Relay, make_pin_factory


def wait_for(cond, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_pulse_opens_then_closes_with_recorded_timing():
    r = Relay(RelayConfig(pin=17, pulse_s=0.2), factory=MockFactory())
    assert r.pin.states[-1].state is False  # driven off at start
    r.pulse()
    assert r.is_open
    assert wait_for(lambda: not r.is_open)
    states = [(s.timestamp, s.state) for s in r.pin.states]
    on = [t for t, s in states if s][0]
    off = [t for t, s in states if not s and t > on][0]
    assert 0.18 <= off - on < 1.0  # the pulse is the configured length, not left open
    r.close()
    assert r.pin.state is False


def test_active_low_relay_idles_high():
    r = Relay(RelayConfig(pin=5, active_high=False, pulse_s=0.1), factory=MockFactory())
    assert r.pin.state is True and not r.is_open
    r.pulse()
    assert r.pin.state is False and r.is_open
    r.close()
    assert r.pin.state is True


def test_close_during_pulse_leaves_relay_off():
    r = Relay(RelayConfig(pulse_s=5.0), factory=MockFactory())
    r.pulse()
    assert r.pin.state is True
    r.close()
    assert r.pin.state is False
    time.sleep(0.05)
    assert r.pin.states[-1].state is False


def test_door_forced_held_open_and_exit_button():
    events = []
    f = MockFactory()
    r = Relay(
        RelayConfig(pulse_s=0.1, door_pin=27, exit_button_pin=22, held_open_s=0.2),
        factory=f,
        on_event=lambda kind, detail: events.append(kind),
    )
    door, button = f.pin(27), f.pin(22)
    door.drive_low()  # closed contact
    door.drive_high()  # door opens without any grant
    assert wait_for(lambda: "door_forced" in events)
    assert wait_for(lambda: "held_open" in events)
    door.drive_low()
    button.drive_low()  # pressed
    assert wait_for(lambda: "exit_button" in events)
    assert r.pulses == 1
    r.close()


def test_unknown_or_unavailable_factory_is_relay_error():
    with pytest.raises(RelayError, match="unknown"):
        make_pin_factory("banana")
    with pytest.raises(RelayError):
        make_pin_factory("lgpio").close()  # no GPIO chip on this machine
