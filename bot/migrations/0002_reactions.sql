-- Schema version 2: each user's thumbs as they stand on each message of a reply, so a user's
-- score follows the reaction they still show. With 👍 then 👎, removing 👎 brings the score
-- back to +1 (version 1 cleared it although 👍 was still there).

CREATE TABLE reactions (
    discord_message_id INTEGER NOT NULL,   -- the reply part reacted to
    user_id            INTEGER NOT NULL,
    emoji              TEXT NOT NULL,      -- as Discord shows it: 👍 and 👍🏽 are two
    message_id         INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    score              INTEGER NOT NULL CHECK (score IN (-1, 1)),
    added_at           TEXT NOT NULL,
    PRIMARY KEY (discord_message_id, user_id, emoji)
) STRICT;
-- rowid orders reactions by arrival: a new row always gets a larger one than every row left.
CREATE INDEX reactions_score ON reactions (message_id, user_id);
CREATE INDEX reactions_user ON reactions (user_id);

-- A score recorded by version 1 stands for one thumb on the reply's first message.
INSERT INTO reactions (discord_message_id, user_id, emoji, message_id, score, added_at)
SELECT p.discord_message_id, f.user_id, CASE f.score WHEN 1 THEN '👍' ELSE '👎' END,
       f.message_id, f.score, f.updated_at
FROM feedback AS f
JOIN reply_parts AS p ON p.message_id = f.message_id
    AND p.part = (SELECT min(part) FROM reply_parts WHERE message_id = f.message_id);
