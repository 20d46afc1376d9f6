"""Freezing: FIFREEZE/FITHAW, the mounts to freeze and the watchdog process that thaws.
Imports nothing of quiesce but errors, atomic and scope: it runs inside the freeze window.
"""
