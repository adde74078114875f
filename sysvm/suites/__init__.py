"""The testinfra suites `verify` runs against a booted system VM, over SSH (conftest.py, test_*.py).

They ship with sysvm because users run them; sysvm's own tests are in the checkout's tests/.
"""
