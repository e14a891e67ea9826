-- Whether a usage record's token figures are the gateway's own count (the upstream reported
-- none), as `usage.estimated` says to the client.
ALTER TABLE usage_records ADD COLUMN estimated boolean NOT NULL DEFAULT false;
