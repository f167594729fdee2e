"""Scale-out over Redis: the event bus shared by several gateway processes, and the distributed lock.
"""
