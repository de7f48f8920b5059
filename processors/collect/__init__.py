"""``custody collect`` and ``custody import``: evidence from the systems teams already run.

Source adapters (:mod:`.opa`, :mod:`.vault`) are pure mappings from a record to contract
events; the transports (the HTTP service, Vault's socket and file audit devices, the
one-shot import) publish what they return and dead-letter what they reject.
"""
