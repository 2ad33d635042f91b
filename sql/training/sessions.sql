-- Search sessions of one data date with their impressed, clicked and purchased items,
-- for the training-data builder. One row per session.
SELECT
    user_id,
    session_id,
    query,
    time_index,
    coalesce(impressed_item_ids, array()) AS impressed_item_ids,
    coalesce(clicked_item_ids, array()) AS clicked_item_ids,
    coalesce(purchased_item_ids, array()) AS purchased_item_ids
FROM search_sessions
WHERE ds = :ds
ORDER BY user_id, time_index, session_id
