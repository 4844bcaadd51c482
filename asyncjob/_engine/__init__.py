"""The execution engine: runs each job, on the event loop or in a thread,
and records its outcome in the store.

It knows nothing of where jobs come from (a perform here, or a claim from a
shared store): the runner and the worker's producer hand it jobs.
"""
