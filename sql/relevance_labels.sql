-- Query-item relevance labels (score 0-3) of one data date.
SELECT query, item_id, item_title, brand, seller_name, attr_value, score
FROM relevance_labels
WHERE ds = :ds
ORDER BY query, item_id
