-- Catalog rows of one data date with their category path (level1/level2[/level3]).
-- Levels that are missing or UNKNOWN are left out of the path.
SELECT
    item_id,
    item_title,
    concat_ws('/', filter(
        array(category_level1_name, category_level2_name, category_level3_name),
        name -> name IS NOT NULL AND name != '' AND upper(name) != 'UNKNOWN'
    )) AS category_path
FROM items
WHERE ds = :ds
ORDER BY item_id
