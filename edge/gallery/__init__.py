"""Encrypted on-device gallery: people, templates, consent; sealed at rest, matched in memory."""
