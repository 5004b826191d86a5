-- Catalog search that finds what customers mean: full-text search in the shop's language
-- (stemming: plurals), accents folded on both sides, trigram similarity for typos, name over
-- tags over description, and an optional embedding per product for semantic ranking.

-- All three are trusted contrib modules (PostgreSQL 13+): the database owner that runs migrations
-- may create them without being a superuser.
CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public;
CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch SCHEMA public;

-- Lowercase without accents. unaccent() is only STABLE (its dictionary could be changed);
-- pinning the dictionary makes this wrapper safe to mark IMMUTABLE for stored columns.
CREATE FUNCTION catalog_fold(text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN pg_catalog.lower(public.unaccent('public.unaccent'::regdictionary, $1));

-- The text-search configuration of a shop language (merchants.language's values).
CREATE FUNCTION catalog_search_config(language text) RETURNS regconfig
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN CASE language
  WHEN 'pt-BR' THEN 'pg_catalog.portuguese'::regconfig
  WHEN 'es' THEN 'pg_catalog.spanish'::regconfig
  WHEN 'en' THEN 'pg_catalog.english'::regconfig
  ELSE 'pg_catalog.simple'::regconfig
END;

-- The folded substring columns of 000003 gave way to the vector below.
ALTER TABLE products
  DROP COLUMN search_name,
  DROP COLUMN search_description,
  -- Comma-separated words a merchant adds ("presente, cozinha").
  ADD COLUMN tags text NOT NULL DEFAULT '' CHECK (length(tags) <= 2000),
  -- The language the product's text is stemmed in: the merchant's, copied by the triggers
  -- below so that a generated column can use it.
  ADD COLUMN search_language text NOT NULL DEFAULT 'pt-BR'
    CHECK (search_language IN ('pt-BR', 'es', 'en')),
  ADD COLUMN search_vector tsvector NOT NULL GENERATED ALWAYS AS (
    setweight(to_tsvector(catalog_search_config(search_language), catalog_fold(name || ' ' || sku)), 'A')
    || setweight(to_tsvector(catalog_search_config(search_language), catalog_fold(tags)), 'B')
    || setweight(to_tsvector(catalog_search_config(search_language), catalog_fold(description)), 'C')
  ) STORED,
  -- The words of the name and tags as written (folded, not stemmed): "solar" is then found
  -- over "sol", though both stem to "sol".
  ADD COLUMN search_surface tsvector NOT NULL GENERATED ALWAYS AS (
    to_tsvector('pg_catalog.simple'::regconfig, catalog_fold(name || ' ' || tags))) STORED,
  -- The embedding of the product's text (unit length), and the md5 of the model and text it
  -- was computed from: a product whose text (or the model) changed no longer matches it and
  -- is embedded again.
  ADD COLUMN embedding real[],
  ADD COLUMN embedding_key text;

-- No pending list (fastupdate): catalog writes are rare, searches must not scan one.
CREATE INDEX products_search_vector_idx ON products USING gin (search_vector)
  WITH (fastupdate = off);

-- Every word of the merchant's catalog (folded, 3+ letters), what a customer's typo is
-- corrected to. Kept by the triggers below; a word no product uses any more stays (it then
-- only finds nothing).
CREATE TABLE product_words (
  merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
  word        text NOT NULL,
  PRIMARY KEY (merchant_id, word)
);
CREATE INDEX product_words_trgm_idx ON product_words USING gin (word gin_trgm_ops)
  WITH (fastupdate = off);
ALTER TABLE product_words ENABLE ROW LEVEL SECURITY;
ALTER TABLE product_words FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON product_words
  USING (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid)
  WITH CHECK (merchant_id = NULLIF(current_setting('app.merchant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON product_words TO igsales_app;

-- Runs as whoever writes the products (RLS applies: the words go to the same merchant).
CREATE FUNCTION products_remember_words() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO public.product_words (merchant_id, word)
  SELECT DISTINCT n.merchant_id, w
  FROM changed n,
       regexp_split_to_table(public.catalog_fold(n.name || ' ' || n.tags || ' ' || n.description),
                             '[^[:alnum:]]+') AS w
  WHERE length(w) >= 3 AND w !~ '^[0-9]+$'
  ON CONFLICT DO NOTHING;
  RETURN NULL;
END
$$;
-- A transition table belongs to one event: one trigger each (an upsert fires both).
CREATE TRIGGER products_words_inserted AFTER INSERT ON products
  REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION products_remember_words();
CREATE TRIGGER products_words_updated AFTER UPDATE ON products
  REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION products_remember_words();

-- A product is stemmed in its merchant's language: taken when it is stored, and again for
-- every product when the merchant's language changes. Both run as the writer, under RLS.
CREATE FUNCTION products_take_merchant_language() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  NEW.search_language := coalesce(
    (SELECT m.language FROM public.merchants m WHERE m.id = NEW.merchant_id), NEW.search_language);
  RETURN NEW;
END
$$;
CREATE TRIGGER products_language BEFORE INSERT ON products
  FOR EACH ROW EXECUTE FUNCTION products_take_merchant_language();

CREATE FUNCTION merchants_language_to_products() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  UPDATE public.products SET search_language = NEW.language
  WHERE merchant_id = NEW.id AND search_language <> NEW.language;
  RETURN NULL;
END
$$;
CREATE TRIGGER merchants_language AFTER UPDATE OF language ON merchants
  FOR EACH ROW WHEN (OLD.language IS DISTINCT FROM NEW.language)
  EXECUTE FUNCTION merchants_language_to_products();

-- The products already stored: their merchant's language and their words. The owner reads
-- and writes no tenant rows otherwise (RLS is forced): policies for these statements only.
CREATE POLICY migrate_catalog ON merchants FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY migrate_catalog ON products TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY migrate_catalog ON product_words FOR INSERT TO CURRENT_USER WITH CHECK (true);
UPDATE products p SET search_language = m.language
FROM merchants m WHERE m.id = p.merchant_id AND p.search_language <> m.language;
INSERT INTO product_words (merchant_id, word)
SELECT DISTINCT p.merchant_id, w
FROM products p,
     regexp_split_to_table(catalog_fold(p.name || ' ' || p.tags || ' ' || p.description),
                           '[^[:alnum:]]+') AS w
WHERE length(w) >= 3 AND w !~ '^[0-9]+$'
ON CONFLICT DO NOTHING;
DROP POLICY migrate_catalog ON merchants;
DROP POLICY migrate_catalog ON products;
DROP POLICY migrate_catalog ON product_words;

-- The key an embedding of this product by `model` would have.
CREATE FUNCTION catalog_embedding_key(model text, name text, tags text, description text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN pg_catalog.md5(model || E'\n' || name || E'\n' || tags || E'\n' || description);

-- Search runs as igsales_catalog, which reads every tenant's products (its own policy), and
-- filters the merchant of the caller's transaction explicitly. Under the tenant policy
-- Postgres may not evaluate a non-leakproof operator (@@, trigram similarity) before the
-- policy's own test, so it cannot use the indexes above: every product of the merchant would
-- be read and scored. The merchant comes from the transaction's setting, never from an
-- argument, so a caller sees exactly what the tenant policy would have shown it.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'igsales_catalog') THEN
    CREATE ROLE igsales_catalog NOLOGIN;
  END IF;
END
$$;
ALTER ROLE igsales_catalog NOLOGIN;
GRANT USAGE ON SCHEMA public TO igsales_catalog;
GRANT SELECT (id, merchant_id, sku, stock, search_vector, search_surface, embedding)
  ON products TO igsales_catalog;
GRANT SELECT ON product_words TO igsales_catalog;
CREATE POLICY catalog_search ON products FOR SELECT TO igsales_catalog USING (true);
CREATE POLICY catalog_search ON product_words FOR SELECT TO igsales_catalog USING (true);

-- The products of the current merchant that match `words` (the customer's words, folded,
-- conversational filler removed), best first, at most `lim`, each with a score in [0, 1];
-- nothing when no product reaches `min_score`. With `query_embedding` (unit length, the
-- model of the products' embeddings) the cosine similarity is blended into the score and
-- may bring products that share no word with the query.
--
-- Per query term t (a stemmed word; the language's stop words drop out), a product's match
-- m(t) is 1 in the name (or SKU), 0.6 in the tags, 0.3 in the description, times 0.9 unless
-- the word appears as typed in the name or tags ("solar" over "sol": both stem to "sol").
-- A word of 4+ letters that no product contains is taken for a typo: it stands for the
-- catalog's words (trigram index for candidates, Levenshtein to confirm: "jakceta" →
-- "jaqueta") at least 0.7 similar (one or two edits in a word of seven letters), each
-- matching at 0.8 × that similarity. Terms are weighted by rarity in the catalog
-- (idf = ln(1 + N / df)): "jogo de panelas" is about the pans, not every "jogo". The score is
-- the weighted mean of m over the terms the catalog knows: a word it does not know at all
-- ("tenis pra caminhar") does not count against a product, and a query none of whose words
-- it knows matches nothing. A correction two edits away ("capinha" → "cozinha") is too weak
-- alone: it counts only for a product that also matches another word as written.
CREATE FUNCTION search_products(words text[], lang text, lim integer, min_score real,
                                query_embedding real[])
RETURNS TABLE (product_id uuid, score real)
-- A handful of rows, not the default estimate of 1000: callers join them to products by id.
ROWS 10
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET pg_trgm.similarity_threshold = 0.3
AS $$
#variable_conflict use_column
DECLARE
  shop uuid := NULLIF(current_setting('app.merchant_id', true), '')::uuid;
  cfg regconfig := public.catalog_search_config(lang);
  t record;
  -- What stands for each term: itself, or for a typo the catalog's close words.
  a_word text[] := '{}';
  a_lex text[] := '{}';
  a_factor float8[] := '{}';
  a_surface text[] := '{}';
  a_typo boolean[] := '{}';
  fix record;
  any_term tsquery;
  n_products bigint;
  pass integer;
  l_id uuid[];
  l_score float8[];
  l_sku text[];
  l_in_stock boolean[];
BEGIN
  IF shop IS NULL THEN
    RETURN;
  END IF;
  -- One statement per term, each planned with its value known: the indexes then serve them.
  FOR t IN
    SELECT DISTINCT ON (lex) w.word, lex
    FROM unnest(words[1:12]) AS w(word),
         unnest(tsvector_to_array(to_tsvector(cfg, public.catalog_fold(w.word)))) AS lex
    ORDER BY lex, w.word
  LOOP
    IF length(t.word) < 4 OR t.word ~ '^[0-9]+$'
       OR EXISTS (SELECT FROM public.products p
                  WHERE p.merchant_id = shop
                    AND p.search_vector @@ (quote_literal(t.lex) || ':ABC')::tsquery) THEN
      a_word := a_word || t.word; a_lex := a_lex || t.lex; a_factor := a_factor || 1.0;
      a_surface := a_surface || t.word; a_typo := a_typo || false;
    ELSE
      FOR fix IN
        SELECT v.word, x.lex,
               1 - public.levenshtein(t.word, v.word)::float8
                   / greatest(length(t.word), length(v.word)) AS sim
        FROM public.product_words v,
             unnest(tsvector_to_array(to_tsvector(cfg, v.word))) AS x(lex)
        WHERE v.merchant_id = shop AND v.word OPERATOR(public.%) t.word
      LOOP
        IF fix.sim >= 0.7 THEN
          a_word := a_word || t.word; a_lex := a_lex || fix.lex; a_factor := a_factor || 0.8 * fix.sim;
          a_surface := a_surface || fix.word; a_typo := a_typo || true;
        END IF;
      END LOOP;
    END IF;
  END LOOP;
  IF cardinality(a_lex) = 0 AND query_embedding IS NULL THEN
    RETURN;
  END IF;
  SELECT count(*) INTO n_products FROM public.products p WHERE p.merchant_id = shop;

  -- Score the candidates, found through the index, in up to three passes that each stop when
  -- `lim` products score enough that no product left out could beat them. First the products
  -- with every word in the name or tags (on a big catalog "camiseta preta m" has hundreds:
  -- those with all three words in the name, near 1, are the answer). Then those with any word
  -- in the name or tags: a product with words only in its description scores at most 0.3. Then
  -- every product with any word.
  FOR pass IN 0..2 LOOP
    CONTINUE WHEN pass = 0 AND (SELECT count(DISTINCT w) FROM unnest(a_word) w) < 2;
    IF pass = 0 THEN
      any_term := (SELECT string_agg('(' || g.alts || ')', ' & ')
                   FROM (SELECT string_agg(DISTINCT quote_literal(x.lex) || ':AB', ' | ') AS alts
                         FROM unnest(a_word, a_lex) AS x(word, lex) GROUP BY x.word) g)::tsquery;
    ELSE
      any_term := array_to_string(
        ARRAY(SELECT DISTINCT quote_literal(l) || CASE WHEN pass = 1 THEN ':AB' ELSE '' END
              FROM unnest(a_lex) l), ' | ')::tsquery;
    END IF;
    SELECT coalesce(array_agg(r.id), '{}'), coalesce(array_agg(r.score), '{}'),
           coalesce(array_agg(r.sku), '{}'), coalesce(array_agg(r.in_stock), '{}')
      INTO l_id, l_score, l_sku, l_in_stock
    FROM (
      WITH alt AS (
        SELECT a.word, a.factor, a.typo,
               (quote_literal(a.lex) || ':ABC')::tsquery AS q_any,
               (quote_literal(a.lex) || ':A')::tsquery AS q_name,
               (quote_literal(a.lex) || ':B')::tsquery AS q_tags,
               quote_literal(a.surface)::tsquery AS q_typed
        FROM unnest(a_word, a_lex, a_factor, a_surface, a_typo) AS a(word, lex, factor, surface, typo)
      ),
      hit AS (
        SELECT c.id, c.sku, c.in_stock, a.word, bool_and(a.typo) AS typo,
               max(CASE WHEN NOT c.v @@ a.q_any THEN 0
                        WHEN c.v @@ a.q_name
                          THEN a.factor * CASE WHEN c.s @@ a.q_typed THEN 1 ELSE 0.9 END
                        WHEN c.v @@ a.q_tags
                          THEN a.factor * 0.6 * CASE WHEN c.s @@ a.q_typed THEN 1 ELSE 0.9 END
                        ELSE a.factor * 0.3 END) AS m
        FROM (SELECT p.id, p.sku, p.stock IS DISTINCT FROM 0 AS in_stock,
                     p.search_vector AS v, p.search_surface AS s
              FROM public.products p
              WHERE p.merchant_id = shop AND p.search_vector @@ any_term) c
        CROSS JOIN alt a
        GROUP BY c.id, c.sku, c.in_stock, a.word
      ),
      df AS (
        SELECT h.word, ln(1 + n_products::float8 / count(*)) AS idf
        FROM hit h WHERE h.m > 0 GROUP BY h.word
      ),
      per AS (
        SELECT h.id, h.sku, h.in_stock,
               coalesce(sum(d.idf * h.m) FILTER (WHERE NOT h.typo OR h.m >= 0.6), 0) AS strong,
               coalesce(sum(d.idf * h.m) FILTER (WHERE h.typo AND h.m < 0.6), 0) AS weak,
               bool_or(NOT h.typo AND h.m > 0) AS exact
        FROM hit h JOIN df d ON d.word = h.word
        WHERE h.m > 0
        GROUP BY h.id, h.sku, h.in_stock
      )
      SELECT per.id, per.sku, per.in_stock,
             (per.strong + CASE WHEN per.exact THEN per.weak ELSE 0 END)
               / (SELECT sum(idf) FROM df) AS score
      FROM per
    ) r;
    EXIT WHEN pass < 2 AND (SELECT count(*) FROM unnest(l_score) x
                            WHERE x >= CASE pass WHEN 0 THEN 0.8 ELSE 0.3 END) >= lim;
  END LOOP;

  IF query_embedding IS NULL THEN
    RETURN QUERY
    SELECT l.id, l.score::real
    FROM unnest(l_id, l_score, l_sku, l_in_stock) AS l(id, score, sku, in_stock)
    WHERE l.score >= min_score
    ORDER BY l.score DESC, l.in_stock DESC, l.sku
    LIMIT lim;
    RETURN;
  END IF;
  -- With meaning: the cosine similarity counts as much as the words. Every embedded product of
  -- the merchant is compared (no vector index here: fine for catalogs of a few thousand). A
  -- product the words did not find needs a close meaning to be shown at all.
  RETURN QUERY
  WITH semantic AS (
    SELECT p.id, p.sku, p.stock IS DISTINCT FROM 0 AS in_stock,
           (SELECT sum(x * y) FROM unnest(p.embedding, query_embedding) AS u(x, y)) AS cosine
    FROM public.products p
    WHERE p.merchant_id = shop AND cardinality(p.embedding) = cardinality(query_embedding)
  ),
  lexical AS (
    SELECT * FROM unnest(l_id, l_score, l_sku, l_in_stock) AS l(id, score, sku, in_stock)
  ),
  blended AS (
    SELECT coalesce(l.id, s.id) AS id, coalesce(l.sku, s.sku) AS sku,
           coalesce(l.in_stock, s.in_stock) AS in_stock,
           0.5 * coalesce(l.score, 0) + 0.5 * greatest(coalesce(s.cosine, 0), 0) AS score
    FROM lexical l FULL JOIN semantic s ON s.id = l.id
    WHERE l.id IS NOT NULL OR s.cosine >= 0.6
  )
  SELECT b.id, b.score::real
  FROM blended b
  WHERE b.score >= min_score
  ORDER BY b.score DESC, b.in_stock DESC, b.sku
  LIMIT lim;
END
$$;
REVOKE EXECUTE ON FUNCTION search_products(text[], text, integer, real, real[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_products(text[], text, integer, real, real[]) TO igsales_app;

GRANT igsales_catalog TO CURRENT_USER;
GRANT CREATE ON SCHEMA public TO igsales_catalog;
ALTER FUNCTION search_products(text[], text, integer, real, real[]) OWNER TO igsales_catalog;
REVOKE CREATE ON SCHEMA public FROM igsales_catalog;
REVOKE igsales_catalog FROM CURRENT_USER;
