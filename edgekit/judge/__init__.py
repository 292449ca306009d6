"""Comparison and int8 judgement: whether two runs agree and whether an int8 file is good enough.

compare.py (metrics shared with ondevice/metrics.py, tolerances and every gate, the fp32 noise floor), targets.py
(int8 recipes, `auto`, how an int8 file is judged on this CPU, the session options it needs). Imports core/ and
ondevice/ only. This package re-exports nothing: import the module you need, e.g.
`from edgekit.judge.compare import Tolerance`.
"""
