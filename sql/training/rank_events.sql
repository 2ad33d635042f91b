-- Ranked (session, item) rows of one data date: the user's earlier clicks and purchases
-- and the item's 30-day show/click/order counts. One row per (session, target item).
SELECT
    user_id,
    session_id,
    query,
    time_index,
    target_item_id,
    is_clicked,
    is_purchased,
    coalesce(recently_clicked_item_ids, array()) AS recently_clicked_item_ids,
    coalesce(recently_purchased_item_ids, array()) AS recently_purchased_item_ids,
    target_item_statistical_features.item_show_cnt_30d_hist AS item_shows,
    target_item_statistical_features.item_click_cnt_30d_hist AS item_clicks,
    target_item_statistical_features.item_order_cnt_30d_hist AS item_orders
FROM rank_events
WHERE ds = :ds
ORDER BY user_id, time_index, session_id, target_item_id
