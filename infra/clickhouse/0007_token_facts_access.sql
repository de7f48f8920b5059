-- requires: access_control
-- custody_analyst reads the token views of 0006, as the SQL twins in dashboards/queries do:
-- SELECT only, as on the tables of 0004. A plain view reads `events` with the reader's own
-- grants and row policies, so an analyst still sees only the tenants analyst_tenants lists.
GRANT SELECT ON {{database}}.token_issuances TO custody_analyst;
GRANT SELECT ON {{database}}.token_revocations TO custody_analyst;
