"""The correlator's worker: the pure step (:mod:`.step`), the bytes of its tables
(:mod:`.codec`), the faust app (:mod:`.app`) and what it works around in faust
(:mod:`.workarounds`). The correlation itself is :mod:`processors.correlation`."""
