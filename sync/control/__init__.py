"""Control: when a sync runs and who runs it: the webhook inbox, the scheduler, the runner, the run
records, the single-flight lock, and the status derived from them.
"""
