-- Back to the folded substring columns of 000003. The role igsales_catalog stays (roles are
-- cluster-wide); what was granted to it here goes with the objects.
GRANT igsales_catalog TO CURRENT_USER;
DROP FUNCTION IF EXISTS search_products(text[], text, integer, real, real[]);
REVOKE igsales_catalog FROM CURRENT_USER;
DROP POLICY IF EXISTS catalog_search ON products;
REVOKE ALL ON products FROM igsales_catalog;
REVOKE ALL ON SCHEMA public FROM igsales_catalog;

DROP TRIGGER IF EXISTS merchants_language ON merchants;
DROP FUNCTION IF EXISTS merchants_language_to_products();
DROP TRIGGER IF EXISTS products_language ON products;
DROP FUNCTION IF EXISTS products_take_merchant_language();
DROP TRIGGER IF EXISTS products_words_inserted ON products;
DROP TRIGGER IF EXISTS products_words_updated ON products;
DROP FUNCTION IF EXISTS products_remember_words();
DROP TABLE IF EXISTS product_words;
DROP FUNCTION IF EXISTS catalog_embedding_key(text, text, text, text);

ALTER TABLE products
  DROP COLUMN embedding_key,
  DROP COLUMN embedding,
  DROP COLUMN search_surface,
  DROP COLUMN search_vector,
  DROP COLUMN search_language,
  DROP COLUMN tags,
  ADD COLUMN search_name text NOT NULL GENERATED ALWAYS AS (
    translate(lower(name || ' ' || sku),
              'áàâãäéèêëíìîïóòôõöúùûüçñ', 'aaaaaeeeeiiiiooooouuuucn')) STORED,
  ADD COLUMN search_description text NOT NULL GENERATED ALWAYS AS (
    translate(lower(description),
              'áàâãäéèêëíìîïóòôõöúùûüçñ', 'aaaaaeeeeiiiiooooouuuucn')) STORED;

DROP FUNCTION IF EXISTS catalog_search_config(text);
DROP FUNCTION IF EXISTS catalog_fold(text);
DROP EXTENSION IF EXISTS fuzzystrmatch;
DROP EXTENSION IF EXISTS pg_trgm;
DROP EXTENSION IF EXISTS unaccent;
