"""``custody notify``: Custody's alerts, from ``custody.alerts.v1``, posted to Prometheus
Alertmanager's v2 API, which groups, silences and routes them to people.

- :mod:`.postable`: an alert record as an Alertmanager alert (labels and annotations), a
  pure mapping;
- :mod:`.alertmanager`: the HTTP client of Alertmanager's ``/api/v2/alerts``;
- :mod:`.app`: the consumer that reads the topic, posts each batch and commits its offsets
  only after Alertmanager answered 2xx.
"""
