-- GitLab requests made, per clock minute (Unix seconds // 60), by every process sharing this database:
-- the request budget's window (gitlab.requests_per_minute) and the `gitlab_requests` field of sync status.
-- Rows older than two hours are pruned as new minutes begin.
CREATE TABLE gitlab_requests (
    minute   INTEGER PRIMARY KEY,
    requests INTEGER NOT NULL
);
