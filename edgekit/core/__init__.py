"""The ground floor: what every other floor uses and nothing of edgekit above it.

errors.py (the typed failures and their exit codes), limits.py (ceilings on everything untrusted), files.py (bounded,
hashed reads), serialize.py (strict JSON of any result), provenance.py (library versions and this CPU), knobs.py (a
stage's options declared once). These import nothing of edgekit but each other and ondevice/ (tests/test_layout.py).
This package re-exports nothing: import the module you need, e.g. `from edgekit.core.errors import BadInput`.
"""
