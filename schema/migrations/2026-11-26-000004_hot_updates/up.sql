-- A reply part's status changes twice per send and a conversation's clock on every message.
-- With no indexed column among what those updates touch, and room left on each page, Postgres
-- updates the row in place (a HOT update): no index entries written. Echo matching needs the
-- customer's parts, not their status, from the index.
DROP INDEX outbound_messages_recipient_idx;
CREATE INDEX outbound_messages_recipient_idx ON outbound_messages (merchant_id, recipient_igsid);
ALTER TABLE outbound_messages SET (fillfactor = 80);
ALTER TABLE conversations SET (fillfactor = 80);
