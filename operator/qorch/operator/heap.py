"""Keep Python's cyclic garbage collector off what lives as long as the operator.

``qorch operator`` holds 300,000-400,000 objects that never die once started (the modules
of qiskit, pydantic, Kopf, aiohttp and the Kubernetes client, the predictor's models) and
makes a few hundred short-lived ones per pod event and per cycle. With CPython's defaults
(a collection every 700 allocations, every tenth of those a collection of the middle
generation, and full ones as the heap grows) each full collection walks all of them:
placing 1,000 one-pod workflows (``bench/scale.py``, 2 cores), the operator made 12 full
collections of ~320 ms each and 1,600 smaller ones: 5.7 s in collections (wall time, every
core busy) of a process that spent 16.4 s of CPU.
"""

from __future__ import annotations

import gc

# Objects allocated (less those freed) between two collections of the youngest generation;
# CPython's default is 700.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Call once start-up is done. What lives now is collected once and frozen
    (``gc.freeze``: kept out of every later collection; it is never garbage), and the
    youngest generation is collected every ``GC_YOUNG_THRESHOLD`` allocations instead of
    700, so that the older generations, counted in those collections, are walked less
    often too. Cyclic garbage made later is still collected, later than with the
    defaults; what waits stays bounded (placing 10,000 pods: peak RSS 552 MiB, as
    before). Objects that only die by reference counting die as they did."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
