-- Where a conversation came from and what came with its messages (Step 10): the ref of the
-- ig.me link or ad the customer opened, what a message replied to (a story, or an earlier
-- message), and the customer's reaction to a message. Only Meta's ids and CDN URLs are kept,
-- never the media itself.
ALTER TABLE conversations
  ADD COLUMN referral_ref text CHECK (referral_ref IS NULL OR length(referral_ref) BETWEEN 1 AND 1000),
  ADD COLUMN referral_at  timestamptz;

ALTER TABLE messages
  ADD COLUMN reply_to    jsonb,
  ADD COLUMN reaction    text CHECK (reaction IS NULL OR length(reaction) BETWEEN 1 AND 64),
  ADD COLUMN reaction_at timestamptz;
