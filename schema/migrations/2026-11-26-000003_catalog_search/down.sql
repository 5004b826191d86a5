ALTER TABLE products DROP COLUMN search_name, DROP COLUMN search_description;
