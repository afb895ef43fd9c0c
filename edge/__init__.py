"""edge-gate: a face-recognition gate controller that always has a ticket way in."""

__version__ = "0.1.0"
