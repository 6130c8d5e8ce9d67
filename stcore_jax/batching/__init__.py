"""Static shapes for variable-length text: length buckets (buckets.py) and sequence packing on the host
(packing.py)."""
