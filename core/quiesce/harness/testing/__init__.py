"""quiesce.harness.testing: throwaway servers and loop disks as pytest fixture factories.

Enabled automatically through the ``pytest11`` entry point when quiesce is installed.
"""
