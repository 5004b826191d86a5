-- Meta's deauthorize and data-deletion callbacks name a user; these find what belongs to it.

-- The app-scoped Instagram user id (`/me` `id`, the token exchange's `user_id`); Meta's
-- callbacks may name an account by it rather than by the professional account id.
ALTER TABLE instagram_accounts ADD COLUMN instagram_user_id text
  CHECK (instagram_user_id ~ '^[0-9]{1,32}$');
CREATE INDEX instagram_accounts_user_id_idx ON instagram_accounts (instagram_user_id);
CREATE INDEX conversations_customer_idx ON conversations (customer_igsid);

-- Data-deletion requests. Not a tenant table: one request may touch several merchants or none,
-- and Meta's status page looks it up by code alone. It holds no personal data: the subject is a
-- SHA-256 of the user id.
CREATE TABLE data_deletion_requests (
  confirmation_code     text PRIMARY KEY CHECK (confirmation_code ~ '^[0-9a-f]{32}$'),
  subject_sha256        text NOT NULL,
  status                text NOT NULL CHECK (status IN ('pending', 'completed')),
  accounts_disconnected integer NOT NULL DEFAULT 0,
  conversations_deleted integer NOT NULL DEFAULT 0,
  requested_at          timestamptz NOT NULL DEFAULT now(),
  completed_at          timestamptz
);
GRANT SELECT, INSERT, UPDATE ON data_deletion_requests TO igsales_app;

GRANT SELECT (instagram_user_id) ON instagram_accounts TO igsales_resolver;
GRANT SELECT (merchant_id, customer_igsid) ON conversations TO igsales_resolver;
CREATE POLICY resolver_lookup ON conversations FOR SELECT TO igsales_resolver USING (true);

-- Accounts a Meta user id names (as professional account id or app-scoped id): ids only.
CREATE FUNCTION accounts_for_meta_user(user_id text)
RETURNS TABLE (merchant_id uuid, instagram_page_id text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.merchant_id, a.instagram_page_id FROM public.instagram_accounts a
  WHERE a.instagram_page_id = user_id OR a.instagram_user_id = user_id
$$;

-- Merchants with a conversation with this customer (Instagram-scoped id): ids only.
CREATE FUNCTION merchants_with_customer(customer text) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT DISTINCT c.merchant_id FROM public.conversations c WHERE c.customer_igsid = customer
$$;

REVOKE EXECUTE ON FUNCTION accounts_for_meta_user(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION merchants_with_customer(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION accounts_for_meta_user(text) TO igsales_app;
GRANT EXECUTE ON FUNCTION merchants_with_customer(text) TO igsales_app;

GRANT igsales_resolver TO CURRENT_USER;
GRANT CREATE ON SCHEMA public TO igsales_resolver;
ALTER FUNCTION accounts_for_meta_user(text) OWNER TO igsales_resolver;
ALTER FUNCTION merchants_with_customer(text) OWNER TO igsales_resolver;
REVOKE CREATE ON SCHEMA public FROM igsales_resolver;
REVOKE igsales_resolver FROM CURRENT_USER;
