"""The turnstile relay and door inputs, through gpiozero and a pin factory chosen by config.

On a Pi the factory is lgpio (edge/gate/lgpio_pins.py: gpiozero's, with pins that never float);
off-Pi and in tests it is gpiozero's own MockFactory, whose pins record every state change with
a timestamp. The relay fails closed: it is claimed as an output already at its inactive level
(never a moment at the active one, even for an active-low board), driven inactive whenever
anything goes wrong, and on close it stays an output driven inactive: gpiozero's own close
would turn it into a floating input. A pulse switches the relay on in the caller's thread, so a
pin that cannot be switched on is a RelayError there (the gate denies `relay_error`); the pulse's
end switches it off from a timer thread that, if the pin refuses, reports `relay_error` and keeps
trying until the relay is off. A process killed mid-pulse cannot run any of this; the systemd
unit's ExecStopPost= (scripts/relay-off) covers that case.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gpiozero import Button, DigitalOutputDevice

from edge.config import PIN_FACTORIES, RelayConfig
from edge.errors import RelayError

log = logging.getLogger(__name__)
OFF_RETRY_FIRST_S = 0.05  # a pin that refused to switch off is tried again, then less often
OFF_RETRY_MAX_S = 1.0


def make_pin_factory(name: str):
    """The gpiozero pin factory named by relay.pin_factory, or a RelayError saying what to do.

    Each backend is imported only when named: each needs its own hardware library.
    """
    try:
        if name == "mock":
            # each backend is imported only when named: each needs its own hardware library
            from gpiozero.pins.mock import MockFactory

            return MockFactory()
        if name == "lgpio":  # imports the lgpio library, which exists only on a Pi
            from edge.gate.lgpio_pins import HoldingLGPIOFactory

            return HoldingLGPIOFactory()
        if name == "rpigpio":  # RPi.GPIO (only on a Pi) claims outputs at their level in one call
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if name == "native":
            # /dev/gpiomem: only on a Pi
            from gpiozero.pins.native import NativeFactory

            return NativeFactory()
    except Exception as e:  # each backend fails in its own way off its hardware
        raise RelayError(
            f"GPIO pin factory {name!r} cannot start: {e}",
            "on a Pi install the `pi` extra and add the user to the gpio group;"
            ' off-Pi use relay.pin_factory = "mock"',
        ) from None
    raise RelayError(
        f"unknown relay.pin_factory {name!r}", f"use one of {', '.join(PIN_FACTORIES)}"
    )


def check_pins(cfg: RelayConfig, factory) -> None:
    """Every configured pin exists on this board and no two share a line (run and doctor)."""
    pins = {"relay.pin": cfg.pin}
    if cfg.door_pin >= 0:
        pins["relay.door_pin"] = cfg.door_pin
    if cfg.exit_button_pin >= 0:
        pins["relay.exit_button_pin"] = cfg.exit_button_pin
    board = factory.board_info
    for key, n in pins.items():
        if not any(True for _ in board.find_pin(f"GPIO{n}")):
            raise RelayError(
                f"{key} = {n} is not a GPIO on this board ({board.model})",
                "use a BCM GPIO number, e.g. 17",
            )
    if len(set(pins.values())) != len(pins):
        raise RelayError(f"relay pins must differ: {pins}", "give each input its own GPIO")


class RelayOutput(DigitalOutputDevice):
    """A DigitalOutputDevice whose close leaves the line an output driven inactive.

    gpiozero's own close makes the pin an input, which floats the relay driver's input; a relay
    board with a pull-up (active-low) would then switch on.
    """

    def close(self) -> None:
        """Lock the door and keep the pin a driven output when the gate stops."""
        pin = getattr(self, "_pin", None)
        if pin is not None:
            self._stop_blink()
            try:
                self._write(False)
            except Exception as e:
                log.error("relay off_failed pin=%s reason=%s", pin.info.name, e)
            self.pin_factory.release_pins(self, pin.info.name)
            self._pin = None  # released without pin.close(), which would make it an input
        super().close()


class Relay:
    """Pulse the turnstile open; never leave it open."""

    def __init__(
        self, cfg: RelayConfig, factory=None, on_event: Callable[[str, str], None] | None = None
    ):
        self.cfg = cfg
        self.factory = factory or make_pin_factory(cfg.pin_factory)
        self.on_event = on_event or (lambda kind, detail: None)
        check_pins(cfg, self.factory)
        try:
            self.device = RelayOutput(
                cfg.pin, active_high=cfg.active_high, initial_value=False, pin_factory=self.factory
            )
        except Exception as e:
            raise RelayError(
                f"relay pin {cfg.pin} cannot be opened: {e}", "check relay.pin and GPIO permissions"
            ) from None
        self._pin = self.device.pin  # kept after close, so tests can read a MockPin's history
        self._lock = threading.RLock()
        self._end = threading.Event()  # set: the running pulse's timer switches nothing
        self._timer: threading.Thread | None = None
        self.pulses = 0
        self.last_pulse = 0.0
        self.door = self.exit_button = None
        self._door_opened_at: float | None = None
        try:
            if cfg.door_pin >= 0:
                self.door = Button(cfg.door_pin, pull_up=True, pin_factory=self.factory)
                self.door.when_released = self._door_open  # contact opens when the door opens
                self.door.when_pressed = self._door_closed
            if cfg.exit_button_pin >= 0:
                self.exit_button = Button(
                    cfg.exit_button_pin, pull_up=True, bounce_time=0.05, pin_factory=self.factory
                )
                self.exit_button.when_pressed = self._exit_pressed
        except Exception as e:
            self.close()
            raise RelayError(f"relay input pins cannot be opened: {e}") from None

    @property
    def pin(self):
        """The relay's gpiozero pin (a MockPin off-Pi, with its recorded states)."""
        return self._pin

    @property
    def is_open(self) -> bool:
        """True while the relay is energised."""
        # close() always drives the relay off before releasing the pin, so closed means shut
        return False if self.device.closed else bool(self.device.value)

    def pulse(self, seconds: float | None = None) -> None:
        """Open for `seconds` (default relay.pulse_s), then close, without blocking the caller.

        The relay is switched on here: a pin that refuses is a RelayError (and driven off). A
        pulse during a pulse restarts it; close() or off() ends it at once, driven inactive.
        """
        seconds = self.cfg.pulse_s if seconds is None else seconds
        with self._lock:
            self._end.set()  # the previous pulse's end is this one's now
            end = self._end = threading.Event()
            try:
                self.device.on()
            except Exception as e:
                try:
                    self.device.off()
                except Exception:  # a glitch on the line: retried until the relay obeys
                    self._timer = threading.Thread(
                        target=self._end_pulse, args=(end, 0.0), name="relay-off", daemon=True
                    )
                    self._timer.start()
                raise RelayError(
                    f"relay pin {self.cfg.pin} failed to switch on: {e}",
                    "check the relay board's wiring and power, then `edge-gate doctor`",
                ) from None
            self.pulses += 1
            self.last_pulse = time.monotonic()
            self._timer = threading.Thread(
                target=self._end_pulse, args=(end, seconds), name="relay-pulse", daemon=True
            )
            self._timer.start()

    def _end_pulse(self, end: threading.Event, seconds: float) -> None:
        """After `seconds`, switch off; a pin that refuses is reported once and tried again
        until it obeys (or a new pulse or close takes over)."""
        if end.wait(seconds):
            return
        delay, failed = OFF_RETRY_FIRST_S, 0
        while True:
            with self._lock:
                if end.is_set():
                    return
                try:
                    self.device.off()
                except Exception as e:  # a pin that cannot be switched: the door stays open
                    err = e
                else:
                    if failed:
                        log.error("relay off pin=%s after %d failed attempts", self.cfg.pin, failed)
                    return
            failed += 1
            if failed == 1:
                log.error("relay off_failed pin=%s reason=%s; retrying", self.cfg.pin, err)
                why = f"relay pin {self.cfg.pin} failed to switch off: {err}"
                self.on_event("relay_error", why)
            if end.wait(delay):
                return
            delay = min(delay * 2, OFF_RETRY_MAX_S)

    def _drive_off(self) -> None:
        try:
            self.device.off()
        except Exception as e:  # the pin is gone: nothing more we can do than say so
            log.error("relay off_failed pin=%s reason=%s", self.cfg.pin, e)

    def off(self) -> None:
        """Drive the relay inactive now (ends any pulse)."""
        with self._lock:
            self._end.set()
            self._drive_off()

    def close(self) -> None:
        """Stop any pulse and leave the relay an output driven inactive (fail closed)."""
        with self._lock:
            self._end.set()  # from here the pulse's timer switches nothing
            timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join(5.0)  # it switches nothing once _end is set, even if it outlives this
        with self._lock:
            for dev in (self.door, self.exit_button):
                if dev is not None:
                    dev.close()
            self.device.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- inputs --------------------------------------------------------------------------------

    def _door_open(self) -> None:
        self._door_opened_at = time.monotonic()
        if time.monotonic() - self.last_pulse > self.cfg.pulse_s + 2.0:
            log.warning("door forced: opened without a grant")
            self.on_event("door_forced", "")
        check = threading.Timer(self.cfg.held_open_s, self._check_held)
        check.daemon = True  # never keeps a stopping service alive
        check.start()

    def _check_held(self) -> None:
        opened = self._door_opened_at
        if opened is not None and time.monotonic() - opened >= self.cfg.held_open_s - 0.01:
            log.warning("door held_open seconds=%.0f", self.cfg.held_open_s)
            self.on_event("held_open", f"{self.cfg.held_open_s:.0f}s")

    def _door_closed(self) -> None:
        self._door_opened_at = None

    def _exit_pressed(self) -> None:
        try:
            self.pulse()
        except RelayError as e:  # gpiozero's callback thread: say so, never raise into it
            log.error("relay error=%s", e)
            self.on_event("relay_error", f"exit button: {e}")
            return
        self.on_event("exit_button", "")
