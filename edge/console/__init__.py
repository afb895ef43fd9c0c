"""The office's staff console: a server-rendered web app over the fleet and the office library.

Pages read the fleet (MQTT) and the office's files; every action calls the same library
function as the matching CLI command, and is written to the office audit log with the name of
the staff member who did it. Nothing here runs on a lane.
"""
