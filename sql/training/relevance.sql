-- Query-item relevance tiers (0-3) of one data date.
SELECT query, item_id, score
FROM relevance_labels
WHERE ds = :ds
ORDER BY query, item_id
