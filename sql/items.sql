-- Catalog rows of one data date: the full catalog in snapshot mode, new and changed
-- rows in delta mode. Duplicate item ids are not removed here; the pipeline
-- quarantines all but one with a reason.
SELECT
    item_id,
    item_title,
    brand_name,
    seller_name,
    category_level1_name,
    category_level2_name,
    category_level3_name,
    attr_value,
    id_source,
    embedding
FROM items
WHERE ds = :ds
ORDER BY item_id
