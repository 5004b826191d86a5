-- Reverts the foundation. The roles stay (cluster-wide, maybe shared by other databases):
-- only what was granted here is revoked.
-- The definer functions belong to igsales_resolver: borrow its membership to drop them.
GRANT igsales_resolver TO CURRENT_USER;
DROP FUNCTION IF EXISTS merchant_ids();
DROP FUNCTION IF EXISTS accounts_due_for_token_refresh(timestamptz, timestamptz);
DROP FUNCTION IF EXISTS merchant_for_instagram_account(text);
REVOKE igsales_resolver FROM CURRENT_USER;
DROP FUNCTION IF EXISTS set_merchant_context(uuid);

DROP TABLE IF EXISTS products;
DROP TABLE IF EXISTS outbound_messages;
DROP TABLE IF EXISTS messages;
DROP TABLE IF EXISTS conversations;
DROP TABLE IF EXISTS webhook_events;
DROP TABLE IF EXISTS instagram_accounts;
DROP TABLE IF EXISTS merchants;

REVOKE ALL ON SCHEMA public FROM igsales_app;
REVOKE ALL ON SCHEMA public FROM igsales_resolver;
