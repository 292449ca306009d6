"""`edgekit debug INT8.onnx`: which QDQ groups must go back to fp32 for an int8 file to pass its gates (search.py),
and the smallest subgraph that still fails them (reduce.py)."""
