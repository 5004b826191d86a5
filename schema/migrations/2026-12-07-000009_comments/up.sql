-- Comments under the merchant's posts become private replies (SPEC §5.3's at-most-once parts),
-- optionally followed by one public reply under the comment.

-- Per merchant: whether comments are answered, on which media (none listed: all), on which
-- words (none listed: any comment), and the public reply's text (none: no public reply).
CREATE TABLE comment_rules (
  merchant_id  uuid PRIMARY KEY REFERENCES merchants (id) ON DELETE CASCADE,
  enabled      boolean NOT NULL DEFAULT false,
  media_ids    text[] NOT NULL DEFAULT '{}' CHECK (cardinality(media_ids) <= 500),
  triggers     text[] NOT NULL DEFAULT '{}' CHECK (cardinality(triggers) <= 100),
  public_reply text CHECK (public_reply IS NULL OR char_length(public_reply) BETWEEN 1 AND 300),
  updated_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE comment_rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE comment_rules FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON comment_rules
  USING (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid)
  WITH CHECK (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON comment_rules TO igsales_app;

-- Products a merchant ties to one of its posts or reels (`media`) or to an ig.me link's ref
-- (`ref`): the model is shown them first when a customer comes from there.
CREATE TABLE product_links (
  merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
  kind        text NOT NULL CHECK (kind IN ('media', 'ref')),
  key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
  sku         text NOT NULL CHECK (length(sku) BETWEEN 1 AND 200),
  position    smallint NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (merchant_id, kind, key, sku)
);
ALTER TABLE product_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE product_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON product_links
  USING (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid)
  WITH CHECK (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON product_links TO igsales_app;

-- A part goes to the customer's DMs, as the private reply to a comment (`recipient.comment_id`,
-- one per comment), or under the comment as a public reply.
ALTER TABLE outbound_messages
  ADD COLUMN channel text NOT NULL DEFAULT 'dm'
    CHECK (channel IN ('dm', 'private_reply', 'public_reply')),
  ADD COLUMN comment_id text,
  ADD CONSTRAINT outbound_messages_comment_check CHECK ((channel = 'dm') = (comment_id IS NULL));
