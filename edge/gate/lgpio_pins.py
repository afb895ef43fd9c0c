"""gpiozero's lgpio pin factory, changed so the relay line never floats and never glitches.

Imported only when `relay.pin_factory = "lgpio"`: importing it imports the lgpio library, which
exists only on a Pi (edge/gate/relay.py, `make_pin_factory`).

gpiozero's `LGPIOPin` claims every line as a floating input when the pin is first looked up,
claims an output at level 0 before writing the wanted level (a click of an active-low relay),
and turns outputs back into floating inputs on close. The classes here change exactly those
three things and nothing else.

They override the methods gpiozero documents for pin implementations (`Pin.output_with_state`,
`Pin.close`) and the factory's `pin_class`, but two things are gpiozero internals: the pin skips
`LGPIOPin.__init__` (whose only other work is to set `_pwm`, `_bounce`, `_callback`, `_edges`,
set here the same way) and both use `factory._handle` and the pin's `_number`, the names lgpio
calls take. So pyproject.toml pins gpiozero to the range they were checked with, and
scripts/check-gpiozero.sh runs tests/test_relay.py against both ends of that range.
"""

from __future__ import annotations

import lgpio
from gpiozero.pins.lgpio import LGPIOFactory, LGPIOPin


class HoldingLGPIOPin(LGPIOPin):
    """An lgpio pin that claims its line only once a device says what it wants it to be.

    An output is claimed at its initial level in one lgpio call; on close an output stays
    driven at the level it was left at (the relay's inactive level); inputs behave as
    gpiozero's own.
    """

    def __init__(self, factory: HoldingLGPIOFactory, info) -> None:
        # LGPIOPin.__init__ would claim the line as a floating input: skip it, keep the rest
        super(LGPIOPin, self).__init__(factory, info)
        self._pwm = None
        self._bounce = None
        self._callback = None
        self._edges = lgpio.BOTH_EDGES

    def output_with_state(self, state) -> None:
        """Claim the line as an output already at `state` (gpiozero: output at 0, then write)."""
        lgpio.gpio_claim_output(self.factory._handle, self._number, int(bool(state)))

    def close(self) -> None:
        """Leave an output driven where it is; release anything else as gpiozero does."""
        if self.factory._handle is not None and self.function == "output":
            return
        super().close()


class HoldingLGPIOFactory(LGPIOFactory):
    """gpiozero's `LGPIOFactory` (same chip choice, same board checks) making `HoldingLGPIOPin`s."""

    def __init__(self, chip: int | None = None) -> None:
        super().__init__(chip)
        self.pin_class = HoldingLGPIOPin
