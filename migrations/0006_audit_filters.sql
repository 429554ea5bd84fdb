-- Audit listings filtered by actor, action (exact or a dotted prefix) or
-- target, newest first by event id (`rapctl audit list --actor ...`, the
-- console's audit page). text_pattern_ops serves both `action = $1` and
-- `action LIKE 'join-request.%'`.
CREATE INDEX cluster_audit_events_actor ON cluster_audit_events (actor, event_id);
CREATE INDEX cluster_audit_events_action ON cluster_audit_events (action text_pattern_ops, event_id);
CREATE INDEX cluster_audit_events_target ON cluster_audit_events (target, event_id);
