"""Analyst-facing files shipped with the package: Grafana dashboards, saved queries and
the web explorer's page (served by :mod:`processors.serve`)."""
