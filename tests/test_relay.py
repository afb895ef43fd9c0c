"""The relay through gpiozero's MockFactory (pin history with timings) and through gpiozero's
LGPIOFactory over a recording stand-in for the lgpio library: fail closed, never float, never
a moment at the active level, inputs."""

from __future__ import annotations

import sys
import time
import types
from collections import defaultdict

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import RelayConfig
from edge.errors import RelayError
from edge.gate.relay import Relay, check_pins, make_pin_factory

# MockPin's stamps and the pulse's wait read the same monotonic clock; this only absorbs
# float rounding in the subtraction, never a scheduling delay
CLOCK_SLACK_S = 1e-3


def wait_for(cond, timeout=30.0):
    """Poll for a state that must come; the bound only stops a broken test (never a timing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_pulse_opens_then_closes_with_recorded_timing():
    with Relay(RelayConfig(pin=17, pulse_s=0.2), factory=MockFactory()) as r:
        r.pin.assert_states([False])  # idle, nothing driven active at start
        r.pulse()
        assert wait_for(lambda: not r.is_open)
        # The recorded history: idle, on, off, nothing else. MockPin stamps each change with
        # the time since the previous one: the relay stayed on at least pulse_s. How much
        # longer depends on how busy the machine is, so no upper bound is asserted here.
        assert [s.state for s in r.pin.states] == [False, True, False]
        assert r.pin.states[2].timestamp >= 0.2 - CLOCK_SLACK_S
    assert r.pin.state is False


def test_active_low_relay_idles_high_and_start_never_drives_low():
    f = MockFactory()
    r = Relay(RelayConfig(pin=5, active_high=False, pulse_s=5.0), factory=f)  # ended by close
    # from the mock's initial (undriven) reading straight to high: no low state after claiming
    assert r.pin.function == "output"
    assert r.pin.state is True
    assert not r.is_open
    assert [s.state for s in r.pin.states][1:] == [True]
    r.pulse()
    assert r.pin.state is False
    assert r.is_open
    r.close()
    assert r.pin.state is True


def test_close_during_pulse_leaves_relay_driven_off_not_floating():
    r = Relay(RelayConfig(pulse_s=5.0), factory=MockFactory())
    r.pulse()
    assert r.pin.state is True
    r.close()  # stops and joins the pulse's thread: nothing can switch the pin after this
    assert [s.state for s in r.pin.states] == [False, True, False]
    assert len(r.pin.states) == 3
    # gpiozero's own close makes the line an input (floating); the relay stays an output
    assert r.pin.function == "output"
    assert r.pin.state is False


def test_a_pulse_during_a_pulse_restarts_it_and_still_ends():
    with Relay(RelayConfig(pulse_s=0.2), factory=MockFactory()) as r:
        r.pulse(600.0)  # far longer than any test: only the second pulse can end it
        r.pulse()
        assert r.pulses == 2
        assert wait_for(lambda: not r.is_open)
        # one opening: the relay never dropped between the two pulses; it stayed on at least
        # the second pulse's 0.2 s
        assert [s.state for s in r.pin.states] == [False, True, False]
        assert r.pin.states[2].timestamp >= 0.2 - CLOCK_SLACK_S


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


def test_unknown_factory_and_pins_not_on_the_board_are_relay_errors():
    with pytest.raises(RelayError, match="unknown"):
        make_pin_factory("banana")
    for cfg in (RelayConfig(pin=99), RelayConfig(pin=17, door_pin=17)):
        with pytest.raises(RelayError, match="relay"):
            check_pins(cfg, MockFactory())
        with pytest.raises(RelayError):
            Relay(cfg, factory=MockFactory())


def test_lgpio_factory_error_is_a_relay_error_when_it_cannot_start(monkeypatch):
    """Holds on any machine: an lgpio that cannot open the chip is a RelayError with a fix."""
    fake = RecordingLgpio(fail_open=True)
    monkeypatch.setitem(sys.modules, "lgpio", fake)
    monkeypatch.delitem(sys.modules, "gpiozero.pins.lgpio", raising=False)
    monkeypatch.delitem(sys.modules, "edge.gate.lgpio_pins", raising=False)
    with pytest.raises(RelayError, match="cannot start"):
        make_pin_factory("lgpio")


# --- the GPIO library itself, recorded ------------------------------------------------------


class RecordingLgpio(types.ModuleType):
    """Stands in for the lgpio module: records every call and what each line was left doing."""

    SET_PULL_NONE, SET_PULL_UP, SET_PULL_DOWN = 0x80, 0x20, 0x40
    SET_BIAS_DISABLE, SET_BIAS_PULL_UP, SET_BIAS_PULL_DOWN = 0x80, 0x20, 0x40
    RISING_EDGE, FALLING_EDGE, BOTH_EDGES = 1, 2, 3

    class error(Exception):  # noqa: N801 - lgpio's name
        pass

    def __init__(self, fail_open: bool = False):
        super().__init__("lgpio")
        self.fail_open = fail_open
        self.calls: list[tuple] = []
        self.lines: dict[int, tuple[str, int | None]] = {}  # gpio -> ("out", level) | ("in", None)

    def gpiochip_open(self, chip):
        self.calls.append(("gpiochip_open", chip))
        if self.fail_open:
            raise self.error("can not open gpiochip")
        return 3

    def gpiochip_close(self, handle):
        self.calls.append(("gpiochip_close", handle))

    def gpio_claim_input(self, handle, gpio, flags=0):
        self.calls.append(("gpio_claim_input", gpio, flags))
        self.lines[gpio] = ("in", None)

    def gpio_claim_output(self, handle, gpio, level=0, flags=0):
        self.calls.append(("gpio_claim_output", gpio, level))
        self.lines[gpio] = ("out", int(level))

    def gpio_write(self, handle, gpio, level):
        self.calls.append(("gpio_write", gpio, int(level)))
        assert self.lines.get(gpio, ("in",))[0] == "out"
        self.lines[gpio] = ("out", int(level))

    def gpio_read(self, handle, gpio):
        self.calls.append(("gpio_read", gpio))
        return self.lines.get(gpio, ("in", 0))[1] or 0

    def gpio_get_mode(self, handle, gpio):
        self.calls.append(("gpio_get_mode", gpio))
        return 2 if self.lines.get(gpio, ("in",))[0] == "out" else 0  # GPIO_IS_OUT

    def gpio_free(self, handle, gpio):
        self.calls.append(("gpio_free", gpio))
        self.lines.pop(gpio, None)

    def levels(self, gpio: int) -> list:
        """Every state the line was put in, in order: an int level, or None for floating input."""
        out = []
        for c in self.calls:
            if c[0] in ("gpio_claim_output", "gpio_write") and c[1] == gpio:
                out.append(c[2])
            elif c[0] in ("gpio_claim_input", "gpio_free") and c[1] == gpio:
                out.append(None)
        return out


@pytest.fixture
def lgpio_factory(monkeypatch):
    """gpiozero's real LGPIOFactory on a recording lgpio, as on a Raspberry Pi 4."""
    from gpiozero.pins import local

    fake = RecordingLgpio()
    monkeypatch.setitem(sys.modules, "lgpio", fake)
    monkeypatch.delitem(sys.modules, "gpiozero.pins.lgpio", raising=False)
    monkeypatch.delitem(sys.modules, "edge.gate.lgpio_pins", raising=False)
    monkeypatch.setattr(local, "get_pi_revision", lambda: 0xC03111)  # a Pi 4B board
    # gpiozero keeps one set of local pins per process; give this test its own
    monkeypatch.setattr(local.LocalPiFactory, "pins", {})
    monkeypatch.setattr(local.LocalPiFactory, "_reservations", defaultdict(list))
    return fake, make_pin_factory("lgpio")


@pytest.mark.parametrize("active_high", [True, False])
def test_lgpio_relay_never_floats_and_never_glitches_active(lgpio_factory, active_high):
    lg, factory = lgpio_factory
    idle, active = (0, 1) if active_high else (1, 0)
    r = Relay(RelayConfig(pin=17, active_high=active_high, pulse_s=0.1), factory=factory)
    # claimed as an output already at the idle level, in one call: no input claim first
    # (floating), no claim at level 0 then a write (an active-low relay would click)
    assert lg.levels(17) == [idle]
    r.pulse()
    assert wait_for(lambda: not r.is_open)
    r.close()
    levels = lg.levels(17)
    assert levels[0] == idle
    assert levels[-1] == idle
    assert levels.count(active) == 1  # the one pulse
    assert lg.lines[17] == ("out", idle)  # closed: still driven inactive, never floating
    assert not any(c[0] in ("gpio_claim_input", "gpio_free") and c[1] == 17 for c in lg.calls)


def test_lgpio_close_mid_pulse_drives_inactive(lgpio_factory):
    lg, factory = lgpio_factory
    r = Relay(RelayConfig(pin=17, active_high=False, pulse_s=5.0), factory=factory)
    r.pulse()
    assert lg.lines[17] == ("out", 0)
    r.close()
    assert lg.lines[17] == ("out", 1)
    assert lg.levels(17) == [1, 0, 1]
