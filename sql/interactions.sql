-- One row per (source, user, session, item) of one data date with impression,
-- click and purchase flags. Items clicked or bought without a logged impression
-- are kept (impressed = false). Item ids are not checked against the catalog
-- here; the pipeline counts and reports the ones it cannot join.
WITH session_items AS (
    SELECT
        'search_sessions' AS source,
        user_id,
        session_id,
        query,
        time_index,
        item_id,
        array_contains(impressed_item_ids, item_id) AS impressed,
        array_contains(clicked_item_ids, item_id) AS clicked,
        array_contains(purchased_item_ids, item_id) AS purchased
    FROM search_sessions
    LATERAL VIEW explode(
        array_distinct(concat(
            coalesce(impressed_item_ids, array()),
            coalesce(clicked_item_ids, array()),
            coalesce(purchased_item_ids, array())
        ))
    ) exploded AS item_id
    WHERE ds = :ds
),
ranked_items AS (
    SELECT
        'rank_events' AS source,
        user_id,
        session_id,
        query,
        time_index,
        target_item_id AS item_id,
        true AS impressed,
        is_clicked = 1 AS clicked,
        is_purchased = 1 AS purchased
    FROM rank_events
    WHERE ds = :ds
)
SELECT * FROM session_items
UNION ALL
SELECT * FROM ranked_items
ORDER BY source, user_id, session_id, item_id
