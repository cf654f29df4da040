-- The queue position the console shows: queued jobs of a model ahead of one job, counted on a
-- small partial index (queued rows only) instead of the whole table.
CREATE INDEX jobs_queued ON jobs (seq) WHERE state = 'queued';
