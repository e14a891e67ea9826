-- Every admin action: who (an admin's username, or "static-token"), what, on what, when.

CREATE TABLE admin_audit (
    id     bigserial PRIMARY KEY,
    actor  text NOT NULL,
    action text NOT NULL,
    target text NOT NULL DEFAULT '',
    detail jsonb NOT NULL DEFAULT '{}',
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_at ON admin_audit (at);
