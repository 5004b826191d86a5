-- The language a merchant sells in: it labels cards and quick replies, formats prices and
-- picks the catalog's text-search configuration. One of the locales the assistant speaks.
ALTER TABLE merchants
  ADD COLUMN language text NOT NULL DEFAULT 'pt-BR'
    CONSTRAINT merchants_language_check CHECK (language IN ('pt-BR', 'es', 'en'));
