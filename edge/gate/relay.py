"""The turnstile relay and door inputs, through gpiozero and a pin factory chosen by config.

On a Pi the factory is lgpio; off-Pi and in tests it is gpiozero's own MockFactory, whose pins
record every state change with a timestamp. The relay fails closed: it is driven off when
created, when closed, and whenever anything goes wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge.config import RelayConfig
from edge.errors import RelayError

log = logging.getLogger(__name__)


def make_pin_factory(name: str):
    try:
        if name == "mock":
            from gpiozero.pins.mock import MockFactory

            return MockFactory()
        if name == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        if name == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if name == "native":
            from gpiozero.pins.native import NativeFactory

            return NativeFactory()
    except Exception as e:  # each backend fails in its own way off its hardware
        raise RelayError(
            f"GPIO pin factory {name!r} cannot start: {e}",
            'on a Pi install the `pi` extra and add the user to the gpio group; off-Pi use relay.pin_factory = "mock"',
        ) from None
    raise RelayError(f"unknown relay.pin_factory {name!r}", "use mock, lgpio, rpigpio or native")


class Relay:
    """Pulse the turnstile open; never leave it open."""

    def __init__(
        self, cfg: RelayConfig, factory=None, on_event: Callable[[str, str], None] | None = None
    ):
        from gpiozero import Button, OutputDevice

        self.cfg = cfg
        self.factory = factory or make_pin_factory(cfg.pin_factory)
        self.on_event = on_event or (lambda kind, detail: None)
        try:
            self.device = OutputDevice(
                cfg.pin, active_high=cfg.active_high, initial_value=False, pin_factory=self.factory
            )
        except Exception as e:
            raise RelayError(
                f"relay pin {cfg.pin} cannot be opened: {e}", "check relay.pin and GPIO permissions"
            ) from None
        self.device.off()
        self._pin = self.device.pin  # kept after close, so tests can read a MockPin's history
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.pulses = 0
        self.last_pulse = 0.0
        self.door = self.exit_button = None
        self._door_opened_at: float | None = None
        if cfg.door_pin >= 0:
            self.door = Button(cfg.door_pin, pull_up=True, pin_factory=self.factory)
            self.door.when_released = self._door_open  # contact opens when the door opens
            self.door.when_pressed = self._door_closed
        if cfg.exit_button_pin >= 0:
            self.exit_button = Button(
                cfg.exit_button_pin, pull_up=True, bounce_time=0.05, pin_factory=self.factory
            )
            self.exit_button.when_pressed = self._exit_pressed

    @property
    def pin(self):
        return self._pin

    @property
    def is_open(self) -> bool:
        # close() always drives the relay off before releasing the pin, so closed means shut
        return False if self.device.closed else bool(self.device.value)

    def pulse(self, seconds: float | None = None) -> None:
        """Open for `seconds` (default relay.pulse_s), then close, without blocking the caller."""
        seconds = self.cfg.pulse_s if seconds is None else seconds
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            try:
                self.device.on()
            except Exception as e:
                self.off()
                raise RelayError(f"relay pin {self.cfg.pin} failed to switch: {e}") from None
            self.pulses += 1
            self.last_pulse = time.monotonic()
            self._timer = threading.Timer(seconds, self.off)
            self._timer.daemon = True
            self._timer.start()

    def off(self) -> None:
        try:
            self.device.off()
        except Exception as e:  # the pin is gone: nothing more we can do than say so
            log.error("relay off_failed pin=%s reason=%s", self.cfg.pin, e)

    def close(self) -> None:
        """Stop any pulse and leave the relay off (fail closed)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.off()
        for dev in (self.door, self.exit_button, self.device):
            if dev is not None:
                dev.close()

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
        self.pulse()
        self.on_event("exit_button", "")
