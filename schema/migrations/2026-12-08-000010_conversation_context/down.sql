ALTER TABLE messages
  DROP COLUMN reaction_at,
  DROP COLUMN reaction,
  DROP COLUMN reply_to;
ALTER TABLE conversations
  DROP COLUMN referral_at,
  DROP COLUMN referral_ref;
