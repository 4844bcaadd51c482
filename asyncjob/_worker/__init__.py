"""A worker's side of a durable store: claiming registered jobs (the
producer, with its prefetch), and keeping what it holds (the maintenance:
leases, recovery of dead workers' jobs, retention).

Only a runner on a :class:`~asyncjob.stores.DurableStore` has one.
"""
