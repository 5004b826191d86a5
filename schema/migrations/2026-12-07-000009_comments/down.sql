ALTER TABLE outbound_messages
  DROP CONSTRAINT outbound_messages_comment_check,
  DROP COLUMN comment_id,
  DROP COLUMN channel;
DROP TABLE product_links;
DROP TABLE comment_rules;
