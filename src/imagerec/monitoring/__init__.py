"""Keeping a deployed model right: record its answers, watch them for drift, pick the pictures worth labelling.

- :mod:`imagerec.monitoring.records`: ``--record DIR`` (one JSON line per answer, pictures worth reviewing).
- :mod:`imagerec.monitoring.reading`: ``read_records(DIR)`` (rows, torn lines, embeddings).
- :mod:`imagerec.monitoring.caps`: the caps on a ``--record DIR`` (pictures, bytes, age).
"""
