-- A reply part that is more than plain text (a card message, quick replies on the last part)
-- keeps the Send API `message` object it sends; `text` stays a readable summary of it (what an
-- operator sees, and what a text echo is matched against).
ALTER TABLE outbound_messages
  ADD COLUMN payload jsonb CHECK (payload IS NULL OR jsonb_typeof(payload) = 'object');
