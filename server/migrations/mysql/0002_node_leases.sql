-- Which live process holds each node id (message ids embed the node id, so two live nodes must
-- never share one). A lease is renewed while the node runs and lapses when it stops.
CREATE TABLE node_leases (
    node_id    INT          NOT NULL PRIMARY KEY,
    instance   VARCHAR(128) NOT NULL,
    expires_ms BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
