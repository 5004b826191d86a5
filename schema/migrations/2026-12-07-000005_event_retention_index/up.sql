-- Retention deletes one merchant's oldest events in batches: an index that starts with the
-- merchant finds them without walking every other merchant's old rows first. It replaces the
-- index on received_at alone, which nothing else used.
CREATE INDEX webhook_events_merchant_received_at_idx ON webhook_events (merchant_id, received_at);
DROP INDEX webhook_events_received_at_idx;
