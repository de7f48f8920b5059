"""The documentation. The alert reference (alerts.md) ships as package data: the query API
serves it as the runbook notifications link to (processors/serving/runbook.py)."""
