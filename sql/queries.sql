-- Distinct search queries of one data date.
-- search_count: sessions that issued the query (search log and ranking log);
-- label_count: relevance labels that mention it. A null query is kept, so the
-- pipeline can quarantine it with a reason instead of losing the row.
WITH searched AS (
    SELECT query, 1 AS searches, 0 AS labels
    FROM search_sessions
    WHERE ds = :ds
    UNION ALL
    SELECT query, 1 AS searches, 0 AS labels
    FROM (
        SELECT DISTINCT user_id, session_id, query
        FROM rank_events
        WHERE ds = :ds
    ) AS ranked_sessions
    UNION ALL
    SELECT query, 0 AS searches, 1 AS labels
    FROM relevance_labels
    WHERE ds = :ds
)
SELECT
    query,
    CAST(SUM(searches) AS BIGINT) AS search_count,
    CAST(SUM(labels) AS BIGINT) AS label_count
FROM searched
GROUP BY query
ORDER BY query
