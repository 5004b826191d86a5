ALTER TABLE merchants DROP COLUMN language;
