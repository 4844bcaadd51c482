"""What a runner does on its own, beside running the jobs it is given: on a
durable store, claiming registered jobs (the producer, with its prefetch)
and keeping what it holds (the maintenance: leases, recovery of dead
workers' jobs, retention); on any store, performing periodic jobs at their
ticks (the scheduler).
"""
