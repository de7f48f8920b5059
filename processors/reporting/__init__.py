"""The auditor's report: controls, identity inventory and framework mapping over a period."""
