-- Foundation: roles, tenant tables with forced row-level security, and the few id-only
-- SECURITY DEFINER functions that may look across tenants.

-- Roles are cluster-wide: create them when missing, never drop them (down.sql only revokes).
-- igsales_app: the group role of the app's login role(s).
-- igsales_resolver: owns the cross-tenant lookup functions; nobody logs in as it.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_app') THEN
    CREATE ROLE igsales_app NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_resolver') THEN
    CREATE ROLE igsales_resolver NOLOGIN;
  END IF;
END
$$;
-- A group role must not log in (the schema test checks it).
ALTER ROLE igsales_app NOLOGIN;
ALTER ROLE igsales_resolver NOLOGIN;

CREATE TABLE merchants (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name            text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
  persona         text NOT NULL DEFAULT 'You are a friendly, concise sales assistant for this shop. Answer questions about products, prices and availability using only the catalog.'
                  CHECK (length(persona) <= 4000),
  ai_enabled      boolean NOT NULL DEFAULT true,
  handoff_message text NOT NULL DEFAULT 'Thanks! A member of our team will reply to you here shortly.'
                  CHECK (length(handoff_message) BETWEEN 1 AND 1000),
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instagram_accounts (
  merchant_id        uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
  -- The Instagram professional account id (`user_id` of /me, `entry.id` of webhooks): digits,
  -- kept as text because it can exceed 2^53.
  instagram_page_id  text NOT NULL CHECK (instagram_page_id ~ '^[0-9]{1,32}$'),
  username           text NOT NULL DEFAULT '',
  -- `v{kver}:` + base64url(nonce ‖ ciphertext ‖ tag); NULL once disconnected.
  token_ciphertext   text CHECK (token_ciphertext ~ '^v[0-9]+:'),
  token_expires_at   timestamptz,
  token_refreshed_at timestamptz,
  connected_at       timestamptz NOT NULL DEFAULT now(),
  needs_reauth       boolean NOT NULL DEFAULT false,
  subscribed_at      timestamptz,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (merchant_id, instagram_page_id),
  -- One merchant per Instagram account; connecting it elsewhere is refused, never re-pointed.
  UNIQUE (instagram_page_id),
  CHECK (token_ciphertext IS NOT NULL OR token_expires_at IS NULL)
);

CREATE TABLE webhook_events (
  merchant_id       uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
  event_id          text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 512),
  kind              text NOT NULL,
  instagram_page_id text NOT NULL,
  event_time        timestamptz,
  received_at       timestamptz NOT NULL DEFAULT now(),
  processed_at      timestamptz,
  -- The worker's half of the dedupe (the ingress's Redis claim is the other half).
  PRIMARY KEY (merchant_id, event_id)
);
CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);

CREATE TABLE conversations (
  id                       uuid NOT NULL DEFAULT gen_random_uuid(),
  merchant_id              uuid NOT NULL,
  instagram_page_id        text NOT NULL,
  customer_igsid           text NOT NULL CHECK (length(customer_igsid) BETWEEN 1 AND 64),
  needs_human              boolean NOT NULL DEFAULT false,
  paused_until             timestamptz,
  last_customer_message_at timestamptz,
  last_event_at            timestamptz,
  created_at               timestamptz NOT NULL DEFAULT now(),
  updated_at               timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id),
  UNIQUE (merchant_id, id),
  UNIQUE (merchant_id, instagram_page_id, customer_igsid),
  FOREIGN KEY (merchant_id, instagram_page_id)
    REFERENCES instagram_accounts (merchant_id, instagram_page_id) ON DELETE CASCADE
);

-- Foreign keys carry merchant_id so a row can never point into another tenant's conversation
-- (FK checks bypass RLS).
CREATE TABLE messages (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  merchant_id     uuid NOT NULL,
  conversation_id uuid NOT NULL,
  mid             text NOT NULL CHECK (length(mid) BETWEEN 1 AND 512),
  direction       text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
  author          text NOT NULL CHECK (author IN ('customer', 'assistant', 'human')),
  text            text,
  attachments     jsonb NOT NULL DEFAULT '[]'::jsonb,
  sent_at         timestamptz NOT NULL,
  is_deleted      boolean NOT NULL DEFAULT false,
  edit_count      integer NOT NULL DEFAULT 0 CHECK (edit_count >= 0),
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (merchant_id, mid),
  FOREIGN KEY (merchant_id, conversation_id)
    REFERENCES conversations (merchant_id, id) ON DELETE CASCADE
);
CREATE INDEX messages_conversation_sent_at_idx ON messages (merchant_id, conversation_id, sent_at DESC);

CREATE TABLE outbound_messages (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  merchant_id        uuid NOT NULL,
  conversation_id    uuid NOT NULL,
  -- inbound event id + part: makes every send at most once across retries and replays.
  idempotency_key    text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 600),
  instagram_page_id  text NOT NULL,
  recipient_igsid    text NOT NULL,
  part_index         smallint NOT NULL CHECK (part_index BETWEEN 0 AND 9),
  text               text NOT NULL CHECK (octet_length(text) BETWEEN 1 AND 1000),
  status             text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'sent', 'send_unknown', 'failed')),
  send_attempts      integer NOT NULL DEFAULT 0 CHECK (send_attempts >= 0),
  meta_message_id    text,
  last_error         text,
  sending_started_at timestamptz,
  sent_at            timestamptz,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  UNIQUE (merchant_id, idempotency_key),
  FOREIGN KEY (merchant_id, conversation_id)
    REFERENCES conversations (merchant_id, id) ON DELETE CASCADE
);
-- Echo matching: our own recent sends to one customer.
CREATE INDEX outbound_messages_recipient_idx ON outbound_messages (merchant_id, recipient_igsid, status);

CREATE TABLE products (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
  sku         text NOT NULL CHECK (length(sku) BETWEEN 1 AND 128),
  name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 500),
  description text NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
  price       numeric(14, 4) NOT NULL CHECK (price >= 0),
  currency    text CHECK (currency ~ '^[A-Z]{3}$'),
  stock       integer CHECK (stock >= 0),
  url         text,
  image_url   text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (merchant_id, sku)
);

-- Row-level security: enabled and forced (the owner is bound too), one policy per table for
-- every command, USING and WITH CHECK. NULLIF: a pooled connection whose setting once existed
-- reads '' (not NULL) afterwards, which must mean "no merchant", not a cast error.
ALTER TABLE merchants ENABLE ROW LEVEL SECURITY;
ALTER TABLE merchants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON merchants
  USING (id = NULLIF(current_setting('app.merchant_id', true), '')::uuid)
  WITH CHECK (id = NULLIF(current_setting('app.merchant_id', true), '')::uuid);

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['instagram_accounts', 'webhook_events', 'conversations', 'messages',
                           'outbound_messages', 'products']
  LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
      USING (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid)
      WITH CHECK (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid)$p$, t);
  END LOOP;
END
$$;

-- The resolver may read just the columns its functions need, of every tenant.
CREATE POLICY resolver_lookup ON merchants FOR SELECT TO igsales_resolver USING (true);
CREATE POLICY resolver_lookup ON instagram_accounts FOR SELECT TO igsales_resolver USING (true);
GRANT USAGE ON SCHEMA public TO igsales_resolver;
GRANT SELECT (id) ON merchants TO igsales_resolver;
GRANT SELECT (merchant_id, instagram_page_id, token_expires_at, token_refreshed_at, connected_at,
              needs_reauth)
  ON instagram_accounts TO igsales_resolver;

-- Sets the transaction's merchant; raises on NULL so "resolve, then set" fails loudly.
CREATE FUNCTION set_merchant_context(merchant uuid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF merchant IS NULL THEN
    RAISE EXCEPTION 'merchant context must not be NULL' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  PERFORM set_config('app.merchant_id', merchant::text, true);
END
$$;

-- Instagram account id → merchant id, for routing webhooks.
CREATE FUNCTION merchant_for_instagram_account(account text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT merchant_id FROM public.instagram_accounts WHERE instagram_page_id = account
$$;

-- Connected accounts whose token expires before `expiring_before` and that were last refreshed
-- (or connected) before `refreshed_before`: the token refresh sweep.
CREATE FUNCTION accounts_due_for_token_refresh(expiring_before timestamptz,
                                               refreshed_before timestamptz)
RETURNS TABLE (merchant_id uuid, instagram_page_id text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.merchant_id, a.instagram_page_id
  FROM public.instagram_accounts a
  WHERE a.token_expires_at IS NOT NULL
    AND NOT a.needs_reauth
    AND a.token_expires_at < expiring_before
    AND coalesce(a.token_refreshed_at, a.connected_at) < refreshed_before
  ORDER BY a.token_expires_at
$$;

-- Every merchant id: crons and `keys rotate` then work inside each merchant's context.
CREATE FUNCTION merchant_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT id FROM public.merchants ORDER BY id
$$;

REVOKE EXECUTE ON FUNCTION set_merchant_context(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION merchant_for_instagram_account(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION accounts_due_for_token_refresh(timestamptz, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION merchant_ids() FROM PUBLIC;

-- What the app may do: data manipulation on tenant tables (RLS decides which rows), and the
-- functions above. No DDL, no ownership.
GRANT USAGE ON SCHEMA public TO igsales_app;
GRANT SELECT, INSERT, UPDATE, DELETE
  ON merchants, instagram_accounts, webhook_events, conversations, messages, outbound_messages,
     products
  TO igsales_app;
GRANT EXECUTE ON FUNCTION set_merchant_context(uuid) TO igsales_app;
GRANT EXECUTE ON FUNCTION merchant_for_instagram_account(text) TO igsales_app;
GRANT EXECUTE ON FUNCTION accounts_due_for_token_refresh(timestamptz, timestamptz) TO igsales_app;
GRANT EXECUTE ON FUNCTION merchant_ids() TO igsales_app;

-- Hand the definer functions to igsales_resolver. ALTER ... OWNER needs membership in the new
-- owner and its CREATE on the schema: both are granted for the moment and taken back, so the
-- migrating role never sees every tenant's rows itself.
GRANT igsales_resolver TO CURRENT_USER;
GRANT CREATE ON SCHEMA public TO igsales_resolver;
ALTER FUNCTION merchant_for_instagram_account(text) OWNER TO igsales_resolver;
ALTER FUNCTION accounts_due_for_token_refresh(timestamptz, timestamptz) OWNER TO igsales_resolver;
ALTER FUNCTION merchant_ids() OWNER TO igsales_resolver;
REVOKE CREATE ON SCHEMA public FROM igsales_resolver;
REVOKE igsales_resolver FROM CURRENT_USER;
