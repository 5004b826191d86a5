-- Catalog search: a folded copy (lowercase, the accents the worker folds stripped) of what a
-- customer's words are matched against, kept by Postgres. Matching is then a plain substring
-- test per word instead of a case-insensitive pattern per word, row and column.
ALTER TABLE products
  ADD COLUMN search_name text NOT NULL GENERATED ALWAYS AS (
    translate(lower(name || ' ' || sku),
              'áàâãäéèêëíìîïóòôõöúùûüçñ', 'aaaaaeeeeiiiiooooouuuucn')) STORED,
  ADD COLUMN search_description text NOT NULL GENERATED ALWAYS AS (
    translate(lower(description),
              'áàâãäéèêëíìîïóòôõöúùûüçñ', 'aaaaaeeeeiiiiooooouuuucn')) STORED;
