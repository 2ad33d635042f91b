-- User profiles of one data date.
SELECT user_id, gender, age_bucket, fre_country, fre_province, fre_city
FROM users
WHERE ds = :ds
ORDER BY user_id
