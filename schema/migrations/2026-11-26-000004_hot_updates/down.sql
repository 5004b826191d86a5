ALTER TABLE conversations RESET (fillfactor);
ALTER TABLE outbound_messages RESET (fillfactor);
DROP INDEX outbound_messages_recipient_idx;
CREATE INDEX outbound_messages_recipient_idx ON outbound_messages (merchant_id, recipient_igsid, status);
