-- The admin panel's usage of every user over a window of days reads usage_records by time alone.
CREATE INDEX usage_records_time ON usage_records (created_at);
