GRANT igsales_resolver TO CURRENT_USER;
DROP FUNCTION IF EXISTS merchants_with_customer(text);
DROP FUNCTION IF EXISTS accounts_for_meta_user(text);
REVOKE igsales_resolver FROM CURRENT_USER;

DROP POLICY IF EXISTS resolver_lookup ON conversations;
REVOKE SELECT (merchant_id, customer_igsid) ON conversations FROM igsales_resolver;
DROP TABLE IF EXISTS data_deletion_requests;
DROP INDEX IF EXISTS conversations_customer_idx;
DROP INDEX IF EXISTS instagram_accounts_user_id_idx;
ALTER TABLE instagram_accounts DROP COLUMN IF EXISTS instagram_user_id;
