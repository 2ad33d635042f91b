-- User profiles of one data date (gender and age bucket feed the prompts).
SELECT user_id, gender, age_bucket
FROM users
WHERE ds = :ds
ORDER BY user_id
